// A Node.js client of the Kybernetes API, generated at run time from protos/
// with @grpc/proto-loader: no code of ours and no generated stubs. It runs
// Create/Get/List (selectors, pagination)/Update/Delete/Watch on pods and one
// Service round trip against a real API server, and checks that every field it
// sent comes back, also in every List item and Watch event (a List encoding
// that repeated an item's `metadata` field once lost it in protobuf.js).
//
//   node tests/node/client.mjs 127.0.0.1:PORT
//
// Exit 0 with a one-line summary when every check passes; exit 1 with the
// first failure otherwise.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTOS = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const PROTO_DIR = join(PROTOS, "kybernetes", "v1");
const CALL_TIMEOUT_MS = 5000;
const OVERALL_TIMEOUT_MS = Number(process.env.KYB_NODE_CLIENT_TIMEOUT_MS || 30000);
const INITIAL_EVENTS_END = "k8s.io/initial-events-end";
const IMAGE = "kybernetes/busybox:latest";

const [address, caFile, certFile, keyFile] = process.argv.slice(2);
if (!address || !caFile || !certFile || !keyFile) {
  console.error("usage: node client.mjs HOST:PORT CA.crt CLIENT.crt CLIENT.key");
  process.exit(2);
}

let checks = 0;
let step = "loading protos";

// Field names are protobuf.js's lowerCamelCase of the proto names
// (resource_version -> resourceVersion, continue_token -> continueToken,
// cluster_ip -> clusterIp): proto-loader does not use json_name. int64 fields
// (resourceVersion, generation, Timestamp.seconds) are decimal strings,
// compared as BigInt; defaults: true so an absent field reads as "" / 0 / [].
const definition = protoLoader.loadSync(
  readdirSync(PROTO_DIR)
    .filter((f) => f.endsWith(".proto"))
    .sort()
    .map((f) => join("kybernetes", "v1", f)),
  { includeDirs: [PROTOS], keepCase: false, longs: String, enums: String, defaults: true, arrays: true, objects: true },
);
const v1 = grpc.loadPackageDefinition(definition).kybernetes.v1;
// TLS as every client of the cluster: the cluster CA, and a client certificate from it.
const credentials = grpc.credentials.createSsl(
  readFileSync(caFile), readFileSync(keyFile), readFileSync(certFile),
);
const pods = new v1.PodRegistry(address, credentials);
const services = new v1.ServiceRegistry(address, credentials);
const namespaces = new v1.NamespaceRegistry(address, credentials);

function check(condition, message) {
  checks += 1;
  if (!condition) throw new Error(message);
}

function checkEqual(actual, expected, what) {
  checks += 1;
  try {
    assert.deepStrictEqual(actual, expected);
  } catch {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

function deadline() {
  return { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) };
}

function call(client, method, request) {
  return new Promise((resolvePromise, reject) => {
    client[method](request, deadline(), (error, response) => (error ? reject(error) : resolvePromise(response)));
  });
}

async function expectCode(promise, code, what) {
  try {
    const response = await promise;
    throw new Error(`${what}: expected gRPC status ${code}, but the call succeeded: ${JSON.stringify(response)}`);
  } catch (error) {
    if (error.code === undefined) throw error;
    checkEqual(error.code, code, `${what}: gRPC status code (${error.details})`);
  }
}

const rv = (meta) => BigInt(meta.resourceVersion);

function sorted(map) {
  return Object.fromEntries(Object.entries(map ?? {}).sort(([a], [b]) => a.localeCompare(b)));
}

// Every piece of metadata a client relies on: what it sent and what the server sets.
function checkMetadata(meta, sent, where) {
  check(meta, `${where}: no metadata`);
  checkEqual(meta.name, sent.name, `${where}: metadata.name`);
  checkEqual(meta.namespace, sent.namespace, `${where}: metadata.namespace`);
  checkEqual(sorted(meta.labels), sorted(sent.labels), `${where}: metadata.labels`);
  checkEqual(sorted(meta.annotations), sorted(sent.annotations), `${where}: metadata.annotations`);
  check(/^[0-9a-f-]{32,36}$/i.test(meta.uid), `${where}: metadata.uid is ${JSON.stringify(meta.uid)}`);
  check(rv(meta) > 0n, `${where}: metadata.resourceVersion is ${JSON.stringify(meta.resourceVersion)}`);
  check(
    meta.creationTimestamp && BigInt(meta.creationTimestamp.seconds) > 1_600_000_000n,
    `${where}: metadata.creationTimestamp is ${JSON.stringify(meta.creationTimestamp)}`,
  );
}

function checkContainer(got, sent, where) {
  check(got, `${where}: missing`);
  checkEqual(got.name, sent.name, `${where}.name`);
  checkEqual(got.image, sent.image, `${where}.image`);
  checkEqual(got.command, sent.command, `${where}.command`);
  checkEqual(got.env, sent.env, `${where}.env`);
  checkEqual(got.ports.length, sent.ports.length, `${where}.ports count`);
  sent.ports.forEach((port, i) => {
    for (const [field, value] of Object.entries(port)) {
      checkEqual(got.ports[i][field], value, `${where}.ports[${i}].${field}`);
    }
  });
}

function checkPod(pod, sent, where) {
  check(pod, `${where}: no pod`);
  checkEqual(pod.kind, "Pod", `${where}: kind`);
  checkEqual(pod.apiVersion, "v1", `${where}: apiVersion`);
  checkMetadata(pod.metadata, sent.metadata, where);
  check(pod.spec, `${where}: no spec`);
  checkEqual(pod.spec.containers.length, sent.spec.containers.length, `${where}: spec.containers count`);
  sent.spec.containers.forEach((c, i) => checkContainer(pod.spec.containers[i], c, `${where}: spec.containers[${i}]`));
  checkEqual(pod.status?.phase, "Pending", `${where}: status.phase`);
}

function makePod(namespace, name, labels, extra = {}) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace, labels, annotations: extra.annotations ?? {} },
    spec: {
      containers: [
        {
          name: "main",
          image: IMAGE,
          command: ["sleep", "3600"],
          ports: extra.ports ?? [],
          env: extra.env ?? [],
        },
      ],
    },
  };
}

// A Watch stream that collects events; next(predicate) waits for the first
// unseen event matching it.
function openWatch(client, options, name) {
  const stream = client.Watch(options);
  const events = [];
  const waiters = [];
  let failure = null;
  const wake = () => {
    for (const waiter of [...waiters]) waiter();
  };
  stream.on("data", (event) => {
    events.push(event);
    wake();
  });
  stream.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) failure = error;
    wake();
  });
  stream.on("end", wake);
  let cursor = 0;
  return {
    events,
    cancel: () => stream.cancel(),
    next(predicate, what, timeoutMs = CALL_TIMEOUT_MS) {
      return new Promise((resolvePromise, reject) => {
        const timer = setTimeout(() => {
          remove();
          const seen = events.map((e) => `${e.type} ${e.object?.metadata?.name || e.object?.metadata?.resourceVersion}`);
          reject(new Error(`${name}: no ${what} within ${timeoutMs} ms; events so far: ${seen.join(", ")}`));
        }, timeoutMs);
        const remove = () => {
          const i = waiters.indexOf(attempt);
          if (i >= 0) waiters.splice(i, 1);
        };
        function attempt() {
          if (failure) {
            clearTimeout(timer);
            remove();
            reject(new Error(`${name}: stream failed: ${failure.code} ${failure.details}`));
            return;
          }
          while (cursor < events.length) {
            const event = events[cursor++];
            if (predicate(event)) {
              clearTimeout(timer);
              remove();
              resolvePromise(event);
              return;
            }
          }
        }
        waiters.push(attempt);
        attempt();
      });
    },
  };
}

async function listAll(client, options, pageSize) {
  const items = [];
  const pages = [];
  let token = "";
  do {
    const page = await call(client, "List", { ...options, limit: pageSize, continueToken: token });
    pages.push(page);
    items.push(...page.items);
    token = page.metadata.continueToken;
    check(pages.length <= 100, "List pagination does not end");
  } while (token);
  return { items, pages };
}

async function main() {
  const ns = `node-${randomBytes(5).toString("hex")}`;
  const sent = {};

  // The pods sent carry every field, a host port among them: a namespace Pod Security's
  // `privileged` level allows (the default, baseline, refuses host ports).
  step = "Namespace Create (privileged)";
  const namespace = await call(namespaces, "Create", {
    metadata: { name: ns, labels: { "pod-security.kubernetes.io/enforce": "privileged" } },
  });
  checkEqual(namespace.status.phase, "Active", "Namespace status.phase");

  step = "Watch with sendInitialEvents (before any pod exists)";
  const initialWatch = openWatch(pods, { namespace: ns, sendInitialEvents: true }, "initial-events watch");
  const end = await initialWatch.next(
    (e) => e.type === "BOOKMARK" && e.object?.metadata?.annotations?.[INITIAL_EVENTS_END] === "true",
    "initial-events-end BOOKMARK",
  );
  check(rv(end.object.metadata) > 0n, "initial-events-end BOOKMARK has no resourceVersion");

  step = "Create";
  sent.web = makePod(ns, "web", { app: "web", tier: "frontend", track: "stable" }, {
    annotations: { "example.com/owner": "node-client", note: "sent by Node.js" },
    ports: [
      { name: "http", containerPort: 8080, protocol: "TCP" },
      { name: "metrics", containerPort: 9090, hostPort: 19090, protocol: "UDP", hostIp: "127.0.0.1" },
    ],
    env: [
      { name: "GREETING", value: "hello" },
      { name: "EMPTY", value: "" },
    ],
  });
  const created = await call(pods, "Create", sent.web);
  checkPod(created, sent.web, "Create");
  checkEqual(created.metadata.generation, "1", "Create: metadata.generation");

  step = "Get";
  const fetched = await call(pods, "Get", { namespace: ns, name: "web" });
  checkPod(fetched, sent.web, "Get");
  checkEqual(fetched, created, "Get returns what Create returned");

  step = "Create more pods";
  const more = {
    "api-1": { app: "api", tier: "backend", track: "stable" },
    "api-2": { app: "api", tier: "backend", track: "canary" },
    "db-0": { app: "db", tier: "backend", track: "stable" },
    "cache-0": { app: "cache", tier: "cache" },
  };
  for (const [name, labels] of Object.entries(more)) {
    sent[name] = makePod(ns, name, labels, { annotations: { index: name } });
    checkPod(await call(pods, "Create", sent[name]), sent[name], `Create ${name}`);
  }
  const stored = {};
  for (const name of Object.keys(sent)) stored[name] = await call(pods, "Get", { namespace: ns, name });
  const original = structuredClone(sent);

  step = "Watch from a List's resourceVersion";
  const snapshot = await call(pods, "List", { namespace: ns });
  const rvWatch = openWatch(pods, { namespace: ns, resourceVersion: snapshot.metadata.resourceVersion }, "rv watch");

  step = "List with label selectors";
  const names = (list) => list.items.map((p) => p.metadata.name).sort();
  const selectors = {
    "": Object.keys(sent).sort(),
    "tier=backend": ["api-1", "api-2", "db-0"],
    "tier in (frontend,cache)": ["cache-0", "web"],
    "app=api,track!=canary": ["api-1"],
    "track,!nope": ["api-1", "api-2", "db-0", "web"],
    "!track": ["cache-0"],
  };
  for (const [selector, expected] of Object.entries(selectors)) {
    const list = await call(pods, "List", { namespace: ns, labelSelector: selector });
    checkEqual(list.kind, "PodList", `List ${JSON.stringify(selector)}: kind`);
    checkEqual(names(list), expected, `List ${JSON.stringify(selector)}: names`);
    check(rv(list.metadata) > 0n, `List ${JSON.stringify(selector)}: list metadata.resourceVersion`);
    for (const item of list.items) {
      const name = item.metadata?.name;
      check(name && sent[name], `List ${JSON.stringify(selector)}: an item with metadata ${JSON.stringify(item.metadata)}`);
      checkPod(item, sent[name], `List ${JSON.stringify(selector)} item ${name}`);
      checkEqual(item, stored[name], `List ${JSON.stringify(selector)} item ${name} equals Get`);
    }
  }
  await expectCode(
    call(pods, "List", { namespace: ns, labelSelector: "tier in (" }),
    grpc.status.INVALID_ARGUMENT,
    "List with a malformed selector",
  );

  step = "List with limit + continue";
  for (const [selector, pageSize] of [["", 2], ["tier=backend", 2], ["", 1]]) {
    const where = `List limit=${pageSize} ${JSON.stringify(selector)}`;
    const { items, pages } = await listAll(pods, { namespace: ns, labelSelector: selector }, pageSize);
    checkEqual(items.map((p) => p.metadata.name), [...selectors[selector]].sort(), `${where}: names in order`);
    check(pages.length >= 2, `${where}: only ${pages.length} page(s)`);
    for (const page of pages) {
      check(page.items.length <= pageSize, `${where}: a page of ${page.items.length} items`);
      checkEqual(page.metadata.resourceVersion, pages[0].metadata.resourceVersion, `${where}: page resourceVersion`);
    }
    checkEqual(pages.at(-1).metadata.continueToken, "", `${where}: last page's continue`);
    for (const item of items) {
      checkPod(item, sent[item.metadata.name], `${where} item ${item.metadata.name}`);
      checkEqual(item, stored[item.metadata.name], `${where} item ${item.metadata.name} equals Get`);
    }
  }

  step = "Update";
  const changed = structuredClone(fetched);
  changed.metadata.labels.track = "canary";
  changed.metadata.labels.updated = "yes";
  const updated = await call(pods, "Update", changed);
  sent.web.metadata.labels = { ...sent.web.metadata.labels, track: "canary", updated: "yes" };
  checkPod(updated, sent.web, "Update");
  check(rv(updated.metadata) > rv(fetched.metadata), "Update: resourceVersion did not increase");
  checkEqual(updated.metadata.uid, created.metadata.uid, "Update: uid");
  checkEqual(updated.metadata.creationTimestamp, created.metadata.creationTimestamp, "Update: creationTimestamp");
  checkEqual(await call(pods, "Get", { namespace: ns, name: "web" }), updated, "Get after Update");
  const canary = await call(pods, "List", { namespace: ns, labelSelector: "track=canary" });
  checkEqual(names(canary), ["api-2", "web"], "List track=canary after Update");

  step = "Update with a stale resourceVersion";
  const stale = structuredClone(fetched);
  stale.metadata.labels.track = "stale";
  await expectCode(call(pods, "Update", stale), grpc.status.ABORTED, "Update with a stale resourceVersion");
  await expectCode(
    call(pods, "Delete", { namespace: ns, name: "web", resourceVersion: fetched.metadata.resourceVersion }),
    grpc.status.ABORTED,
    "Delete with a stale resourceVersion",
  );
  checkEqual(await call(pods, "Get", { namespace: ns, name: "web" }), updated, "Get after the stale writes");

  step = "Watch events";
  const lateSent = makePod(ns, "late", { app: "late" }, { annotations: { when: "during the watch" } });
  const late = await call(pods, "Create", lateSent);
  checkPod(late, lateSent, "Create late");
  sent.late = structuredClone(lateSent);
  const lateChanged = structuredClone(late);
  lateChanged.metadata.annotations.when = "changed";
  const lateUpdated = await call(pods, "Update", lateChanged);
  sent.late.metadata.annotations = { when: "changed" };
  const lateDeleted = await call(pods, "Delete", { namespace: ns, name: "late", resourceVersion: lateUpdated.metadata.resourceVersion });
  checkEqual(lateDeleted.metadata.uid, late.metadata.uid, "Delete late: uid");

  for (const watch of [initialWatch, rvWatch]) {
    const byName = (type, name) => (e) => e.type === type && e.object?.metadata?.name === name;
    if (watch === initialWatch) {
      // Opened before any pod existed: every pod's creation is a live ADDED.
      for (const name of Object.keys(original)) {
        const event = await watch.next(byName("ADDED", name), `ADDED ${name}`);
        checkPod(event.object, original[name], `initial-events watch: ADDED ${name}`);
        checkEqual(event.object, stored[name], `initial-events watch: ADDED ${name} equals Get`);
      }
      const modified = await watch.next(byName("MODIFIED", "web"), "MODIFIED web");
      checkEqual(modified.object, updated, "initial-events watch: MODIFIED web");
    } else {
      const modified = await watch.next(byName("MODIFIED", "web"), "MODIFIED web");
      checkEqual(modified.object, updated, "rv watch: MODIFIED web");
    }
    const name = watch === initialWatch ? "initial-events watch" : "rv watch";
    const added = await watch.next(byName("ADDED", "late"), "ADDED late");
    checkPod(added.object, lateSent, `${name}: ADDED late`);
    checkEqual(added.object, late, `${name}: ADDED late equals Create`);
    const modified = await watch.next(byName("MODIFIED", "late"), "MODIFIED late");
    checkPod(modified.object, sent.late, `${name}: MODIFIED late`);
    checkEqual(modified.object, lateUpdated, `${name}: MODIFIED late equals Update`);
    const deleted = await watch.next(byName("DELETED", "late"), "DELETED late");
    checkPod(deleted.object, sent.late, `${name}: DELETED late`);
    checkEqual(deleted.object.metadata.uid, late.metadata.uid, `${name}: DELETED late uid`);
    const order = watch.events
      .filter((e) => e.type !== "BOOKMARK" && e.object.metadata.name === "late")
      .map((e) => e.type);
    checkEqual(order, ["ADDED", "MODIFIED", "DELETED"], `${name}: event order for late`);
    for (const event of watch.events) {
      if (event.type === "BOOKMARK") continue;
      check(["ADDED", "MODIFIED", "DELETED"].includes(event.type), `${name}: event type ${event.type}`);
      const meta = event.object?.metadata;
      check(meta?.name && meta.namespace === ns && meta.uid && rv(meta) > 0n, `${name}: ${event.type} event without full metadata: ${JSON.stringify(meta)}`);
    }
    watch.cancel();
  }

  step = "Delete";
  for (const name of Object.keys(more)) {
    const deleted = await call(pods, "Delete", { namespace: ns, name });
    checkEqual(deleted.metadata.uid, stored[name].metadata.uid, `Delete ${name}: uid`);
  }
  const deleted = await call(pods, "Delete", { namespace: ns, name: "web", resourceVersion: updated.metadata.resourceVersion });
  checkEqual(deleted.metadata.name, "web", "Delete web: name");
  checkEqual(deleted.metadata.uid, created.metadata.uid, "Delete web: uid");
  await expectCode(call(pods, "Get", { namespace: ns, name: "web" }), grpc.status.NOT_FOUND, "Get after Delete");
  await expectCode(call(pods, "Delete", { namespace: ns, name: "web" }), grpc.status.NOT_FOUND, "Delete twice");
  checkEqual((await call(pods, "List", { namespace: ns })).items, [], "List after Delete");

  step = "Service round trip";
  const svcSent = {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: "web", namespace: ns, labels: { app: "web" }, annotations: { "example.com/svc": "node" } },
    spec: {
      selector: { app: "web", tier: "frontend" },
      ports: [
        { name: "http", protocol: "TCP", port: 80, targetPort: "http" },
        { name: "dns", protocol: "UDP", port: 53, targetPort: "5353" },
      ],
    },
  };
  const svc = await call(services, "Create", svcSent);
  checkEqual(svc.kind, "Service", "Service Create: kind");
  checkMetadata(svc.metadata, svcSent.metadata, "Service Create");
  checkEqual(sorted(svc.spec.selector), sorted(svcSent.spec.selector), "Service Create: spec.selector");
  svcSent.spec.ports.forEach((port, i) => {
    for (const [field, value] of Object.entries(port)) {
      checkEqual(svc.spec.ports[i]?.[field], value, `Service Create: spec.ports[${i}].${field}`);
    }
  });
  check(/^\d+\.\d+\.\d+\.\d+$/.test(svc.spec.clusterIp), `Service Create: spec.clusterIP is ${JSON.stringify(svc.spec.clusterIp)}`);
  checkEqual(await call(services, "Get", { namespace: ns, name: "web" }), svc, "Service Get");
  const svcList = await call(services, "List", { namespace: ns, labelSelector: "app=web" });
  checkEqual(svcList.items, [svc], "Service List");
  const svcDeleted = await call(services, "Delete", { namespace: ns, name: "web" });
  checkEqual(svcDeleted.metadata.uid, svc.metadata.uid, "Service Delete: uid");
  await expectCode(call(services, "Get", { namespace: ns, name: "web" }), grpc.status.NOT_FOUND, "Service Get after Delete");

  await call(namespaces, "Delete", { name: ns });
  return `${ns}: ${checks} checks passed (pods: create/get/list with selectors and pagination/update/stale update/watch/delete; service clusterIP ${svc.spec.clusterIp})`;
}

const overall = setTimeout(() => {
  console.error(`FAIL (${step}): no result after ${OVERALL_TIMEOUT_MS} ms`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

main().then(
  (summary) => {
    clearTimeout(overall);
    console.log(`OK node client against ${address}: ${summary}`);
    pods.close();
    services.close();
    namespaces.close();
    process.exit(0);
  },
  (error) => {
    clearTimeout(overall);
    const detail = error.code !== undefined ? `gRPC ${error.code} ${error.details}` : error.message;
    console.error(`FAIL (${step}): ${detail}`);
    if (error.code === undefined && process.env.KYB_NODE_CLIENT_DEBUG) console.error(error.stack);
    process.exit(1);
  },
);
