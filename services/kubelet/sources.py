"""Where the kubelet learns which pods to run, merged into one desired state.

Four sources: the API server (pods bound to this node), a manifest file or
directory, an HTTP URL, and pods submitted to the kubelet's own server. Pods
from the last three are static pods: named <name>-<node>, with a uid derived
from their source and name so that a restarted kubelet recognises (and adopts)
them, and run whether or not an API server is there.

A source that reads a bad manifest logs it and keeps what it had; the other
sources, and the other manifests of the same source, are unaffected.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from google.protobuf import json_format
from google.protobuf.message import Message

from kybernetes.v1 import pod_pb2
from services.common.validation import validate_pod
from services.common.defaults import default_pod
from services.common.runtime.informer import Informer
from services.common.log import get_logger
from services.common.manifests import ManifestError, load_manifests, manifest_paths
from services.common.resources import DEFAULT_NAMESPACE, PODS

from .naming import static_pod_name, static_pod_uid

SOURCE_API = "api"
SOURCE_FILE = "file"
SOURCE_HTTP = "http"
SOURCE_SERVER = "server"
STATIC_SOURCES = (SOURCE_FILE, SOURCE_HTTP, SOURCE_SERVER)

# Kubernetes' annotations for static and mirror pods.
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"
CONFIG_HASH_ANNOTATION = "kubernetes.io/config.hash"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

log = get_logger(module="kubelet.sources")


class InvalidPodError(ValueError):
    """A manifest that does not describe a pod this kubelet can run."""


def is_mirror_pod(pod: pod_pb2.Pod) -> bool:
    return MIRROR_ANNOTATION in pod.metadata.annotations


def pod_source(pod: pod_pb2.Pod) -> str:
    return pod.metadata.annotations.get(CONFIG_SOURCE_ANNOTATION, SOURCE_API)


def static_pod_hash(pod: pod_pb2.Pod) -> str:
    """A fingerprint of what a static pod asks for; its mirror pod carries it."""
    digest = hashlib.sha256()
    digest.update(pod.spec.SerializeToString(deterministic=True))
    for key in sorted(pod.metadata.labels):
        digest.update(f"\0{key}={pod.metadata.labels[key]}".encode())
    return digest.hexdigest()[:32]


def make_static_pod(manifest: Message, source: str, node: str) -> pod_pb2.Pod:
    """A manifest's pod as this node runs it: defaulted, validated, renamed
    <name>-<node>, bound to the node, with a deterministic uid."""
    if not isinstance(manifest, pod_pb2.Pod):
        raise InvalidPodError(f"{type(manifest).__name__}: a static pod source only takes Pods")
    pod = pod_pb2.Pod()
    pod.CopyFrom(manifest)
    if pod.spec.node_name and pod.spec.node_name != node:
        raise InvalidPodError(
            f'pod "{pod.metadata.name}": spec.nodeName: is "{pod.spec.node_name}", but this kubelet is node "{node}"'
        )
    pod.ClearField("status")
    meta = pod.metadata
    meta.namespace = meta.namespace or DEFAULT_NAMESPACE
    for server_owned in (
        "uid", "resource_version", "generation", "creation_timestamp", "deletion_timestamp",
        "deletion_grace_period_seconds",
    ):
        meta.ClearField(server_owned)
    if not meta.name:
        raise InvalidPodError("metadata.name: Required value (static pods need a name)")
    meta.name = static_pod_name(meta.name, node)
    pod.spec.node_name = node
    default_pod(pod)
    errors = validate_pod(pod)
    if errors:
        raise InvalidPodError(f'Pod "{meta.name}" is invalid: ' + "; ".join(str(error) for error in errors))
    meta.uid = static_pod_uid(source, node, meta.namespace, meta.name)
    meta.annotations[CONFIG_SOURCE_ANNOTATION] = source
    meta.annotations[CONFIG_HASH_ANNOTATION] = static_pod_hash(pod)
    return pod


def parse_static_pods(text: str, origin: str, source: str, node: str) -> list[pod_pb2.Pod]:
    """Every pod of a manifest text (YAML or JSON, several documents or a List)."""
    try:
        manifests = load_manifests(text, origin)
    except ManifestError as error:
        raise InvalidPodError(str(error)) from None
    return [make_static_pod(manifest, source, node) for manifest in manifests]


def _spec_fingerprint(pod: pod_pb2.Pod) -> tuple:
    """What a pod worker acts on: a change elsewhere (status, resource_version)
    does not wake it. A deletion does, and so does a shorter grace for it."""
    meta = pod.metadata
    return (
        meta.uid,
        pod.spec.SerializeToString(deterministic=True),
        meta.HasField("deletion_timestamp"),
        meta.deletion_grace_period_seconds if meta.HasField("deletion_grace_period_seconds") else None,
    )


@dataclass
class _Entry:
    source: str
    pod: pod_pb2.Pod
    seen: int  # first-seen order: on a name clash the incumbent wins


class PodConfig:
    """The merged desired pods of every source, by uid.

    Two pods of one namespace/name from different sources: the one seen first
    runs, the other is logged and ignored until the first goes.
    """

    def __init__(self, on_change: Callable[[set[str]], None], on_all_ready: Callable[[], None] | None = None) -> None:
        self._on_change = on_change
        self._on_all_ready = on_all_ready
        self._by_source: dict[str, dict[str, pod_pb2.Pod]] = {}
        self._first_seen: dict[str, int] = {}
        self._counter = 0
        self._merged: dict[str, _Entry] = {}
        self._expected: set[str] = set()
        self._ready: set[str] = set()
        self._log = get_logger(module="kubelet.podconfig")

    def expect(self, source: str) -> None:
        """Declares a source: orphans are removed only once every source has spoken."""
        self._expected.add(source)
        self._by_source.setdefault(source, {})

    def mark_ready(self, source: str) -> None:
        if source not in self._ready:
            self._ready.add(source)
            self._log.info("pod_source_ready", source=source)
            if self.all_ready and self._on_all_ready is not None:
                self._on_all_ready()

    @property
    def all_ready(self) -> bool:
        return self._expected <= self._ready

    def set_pods(self, source: str, pods: Iterable[pod_pb2.Pod]) -> None:
        """Replaces everything a source contributes."""
        self._by_source[source] = {pod.metadata.uid: pod for pod in pods}
        self._merge()

    def update_pod(self, source: str, pod: pod_pb2.Pod) -> None:
        self._by_source.setdefault(source, {})[pod.metadata.uid] = pod
        self._merge()

    def remove_pod(self, source: str, uid: str) -> None:
        if self._by_source.get(source, {}).pop(uid, None) is not None:
            self._merge()

    def get(self, uid: str) -> pod_pb2.Pod | None:
        entry = self._merged.get(uid)
        return entry.pod if entry is not None else None

    def pods(self) -> list[pod_pb2.Pod]:
        return [entry.pod for entry in self._merged.values()]

    def source_pods(self, source: str) -> dict[str, pod_pb2.Pod]:
        return dict(self._by_source.get(source, {}))

    def find(self, namespace: str, name: str) -> pod_pb2.Pod | None:
        for entry in self._merged.values():
            if entry.pod.metadata.namespace == namespace and entry.pod.metadata.name == name:
                return entry.pod
        return None

    def source_of(self, uid: str) -> str | None:
        entry = self._merged.get(uid)
        return entry.source if entry is not None else None

    def _merge(self) -> None:
        candidates: list[_Entry] = []
        for source, pods in self._by_source.items():
            for uid, pod in pods.items():
                if uid not in self._first_seen:
                    self._counter += 1
                    self._first_seen[uid] = self._counter
                candidates.append(_Entry(source, pod, self._first_seen[uid]))
        candidates.sort(key=lambda entry: entry.seen)
        merged: dict[str, _Entry] = {}
        names: dict[tuple[str, str], _Entry] = {}
        for entry in candidates:
            key = (entry.pod.metadata.namespace, entry.pod.metadata.name)
            incumbent = names.get(key)
            if incumbent is not None:
                if entry.pod.metadata.uid not in self._merged and entry.pod.metadata.uid != incumbent.pod.metadata.uid:
                    self._log.warning(
                        "pod_name_conflict_ignored", pod=f"{key[0]}/{key[1]}", source=entry.source,
                        running_from=incumbent.source,
                    )
                continue
            names[key] = entry
            merged[entry.pod.metadata.uid] = entry
        live = {uid for pods in self._by_source.values() for uid in pods}
        for uid in list(self._first_seen):
            if uid not in live:
                del self._first_seen[uid]
        changed: set[str] = set()
        for uid in set(merged) | set(self._merged):
            old, new = self._merged.get(uid), merged.get(uid)
            if old is not None and new is not None and old.pod is new.pod:
                continue
            if old is None or new is None or _spec_fingerprint(old.pod) != _spec_fingerprint(new.pod):
                changed.add(uid)
        self._merged = merged
        if changed:
            self._on_change(changed)


# --- file and HTTP sources -----------------------------------------------------------------


class FileSource:
    """A manifest file or a directory of them (*.yaml, *.yml, *.json), re-read
    every period; a file that did not change is not parsed again."""

    def __init__(self, path: str, node: str, config: PodConfig, period: float) -> None:
        self.path = path
        self.node = node
        self.config = config
        self.period = period
        # file -> ((mtime_ns, size), pods): a bad file keeps its last good pods.
        self._files: dict[str, tuple[tuple[int, int], list[pod_pb2.Pod]]] = {}
        self._missing_logged = False
        self.errors: dict[str, str] = {}
        config.expect(SOURCE_FILE)

    async def run(self) -> None:
        while True:
            try:
                pods = await asyncio.to_thread(self.read)
                self.config.set_pods(SOURCE_FILE, pods)
                self.config.mark_ready(SOURCE_FILE)
            except Exception:
                log.exception("manifest_path_read_failed", path=self.path)
            await asyncio.sleep(self.period)

    def read(self) -> list[pod_pb2.Pod]:
        if not os.path.exists(self.path):
            if not self._missing_logged:
                log.warning("manifest_path_missing", path=self.path)
                self._missing_logged = True
            self._files.clear()
            return []
        self._missing_logged = False
        files = manifest_paths([self.path])
        fresh: dict[str, tuple[tuple[int, int], list[pod_pb2.Pod]]] = {}
        for path in files:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                continue
            signature = (info.st_mtime_ns, info.st_size)
            known = self._files.get(path)
            if known is not None and known[0] == signature:
                fresh[path] = known
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                pods = parse_static_pods(text, path, SOURCE_FILE, self.node)
            except (InvalidPodError, OSError, UnicodeDecodeError) as error:
                message = str(error)
                if self.errors.get(path) != message:
                    log.error("manifest_invalid", source=SOURCE_FILE, path=path, error=message,
                              keeping=len(known[1]) if known else 0)
                self.errors[path] = message
                # Keep the last good pods of this file; remember the bad signature
                # so the same bad content is not re-parsed (and re-logged) each period.
                fresh[path] = (signature, known[1] if known else [])
                continue
            self.errors.pop(path, None)
            if known is None or [p.SerializeToString(deterministic=True) for p in known[1]] != [
                p.SerializeToString(deterministic=True) for p in pods
            ]:
                log.info("manifest_read", source=SOURCE_FILE, path=path, pods=[p.metadata.name for p in pods])
            fresh[path] = (signature, pods)
        for gone in set(self.errors) - set(fresh):
            del self.errors[gone]
        self._files = fresh
        return [pod for _, pods in fresh.values() for pod in pods]


class HttpSource:
    """Manifests fetched from a URL every period; a failed fetch or a bad body
    keeps the pods of the last good one."""

    def __init__(self, url: str, node: str, config: PodConfig, period: float, timeout: float = 10.0) -> None:
        self.url = url
        self.node = node
        self.config = config
        self.period = period
        self.timeout = timeout
        self._last_body: bytes | None = None
        self.error = ""
        config.expect(SOURCE_HTTP)

    async def run(self) -> None:
        while True:
            try:
                await self.fetch_once()
            except Exception:
                log.exception("manifest_url_failed", url=self.url)
            await asyncio.sleep(self.period)

    async def fetch_once(self) -> None:
        try:
            body = await asyncio.to_thread(self._get)
        except (urllib.error.URLError, OSError, ValueError) as error:
            self._report(f"fetching {self.url}: {getattr(error, 'reason', None) or error}")
            return
        if body == self._last_body:
            return
        try:
            pods = parse_static_pods(body.decode("utf-8"), self.url, SOURCE_HTTP, self.node) if body.strip() else []
        except (InvalidPodError, UnicodeDecodeError) as error:
            self._report(str(error))
            self._last_body = body
            return
        self._last_body = body
        self.error = ""
        log.info("manifest_read", source=SOURCE_HTTP, url=self.url, pods=[p.metadata.name for p in pods])
        self.config.set_pods(SOURCE_HTTP, pods)
        self.config.mark_ready(SOURCE_HTTP)

    def _report(self, message: str) -> None:
        if message != self.error:
            log.error("manifest_invalid", source=SOURCE_HTTP, url=self.url, error=message)
        self.error = message

    def _get(self) -> bytes:
        request = urllib.request.Request(self.url, headers={"Accept": "application/yaml, application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read(16 * 1024 * 1024)


# --- pods submitted to the kubelet's own server ----------------------------------------------


class SubmittedPodError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "invalid", "exists", "not_found"


class ServerSource:
    """Pods submitted through the Kubelet service (SubmitPod / DeleteStaticPod).

    They are kept on disk under <root-dir>/submitted-pods, so a restarted kubelet
    runs (and adopts) them again."""

    def __init__(self, root_dir: str, node: str, config: PodConfig) -> None:
        self.directory = os.path.join(root_dir, "submitted-pods")
        self.node = node
        self.config = config
        config.expect(SOURCE_SERVER)

    async def load(self) -> None:
        pods = await asyncio.to_thread(self._load)
        self.config.set_pods(SOURCE_SERVER, pods)
        self.config.mark_ready(SOURCE_SERVER)

    def _load(self) -> list[pod_pb2.Pod]:
        pods: list[pod_pb2.Pod] = []
        if not os.path.isdir(self.directory):
            return pods
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    pod = json_format.Parse(handle.read(), pod_pb2.Pod())
                pods.append(make_static_pod(pod, SOURCE_SERVER, self.node))
            except Exception as error:
                log.error("submitted_pod_unreadable", path=path, error=str(error))
        return pods

    async def submit(self, manifest: pod_pb2.Pod) -> pod_pb2.Pod:
        try:
            pod = make_static_pod(manifest, SOURCE_SERVER, self.node)
        except InvalidPodError as error:
            log.error("manifest_invalid", source=SOURCE_SERVER, error=str(error))
            raise SubmittedPodError("invalid", str(error)) from None
        existing = self.config.find(pod.metadata.namespace, pod.metadata.name)
        if existing is not None and existing.metadata.uid != pod.metadata.uid:
            raise SubmittedPodError(
                "exists",
                f'pod "{pod.metadata.namespace}/{pod.metadata.name}" already runs on this node '
                f"from source {pod_source(existing)!r}",
            )
        await asyncio.to_thread(self._save, pod)
        log.info("static_pod_submitted", pod=f"{pod.metadata.namespace}/{pod.metadata.name}")
        self.config.update_pod(SOURCE_SERVER, pod)
        return pod

    async def delete(self, namespace: str, name: str) -> pod_pb2.Pod:
        namespace = namespace or DEFAULT_NAMESPACE
        candidates = {name, static_pod_name(name, self.node)}
        for pod in self.config.source_pods(SOURCE_SERVER).values():
            if pod.metadata.namespace == namespace and pod.metadata.name in candidates:
                await asyncio.to_thread(self._unlink, pod.metadata.uid)
                self.config.remove_pod(SOURCE_SERVER, pod.metadata.uid)
                log.info("static_pod_deleted", pod=f"{namespace}/{pod.metadata.name}")
                return pod
        other = self.config.find(namespace, static_pod_name(name, self.node)) or self.config.find(namespace, name)
        if other is not None:
            raise SubmittedPodError(
                "not_submitted",
                f'pod "{namespace}/{other.metadata.name}" comes from source {pod_source(other)!r}, '
                "not from SubmitPod: remove it there",
            )
        raise SubmittedPodError("not_found", f'no pod "{namespace}/{name}" was submitted to this kubelet')

    def _path(self, uid: str) -> str:
        return os.path.join(self.directory, f"{uid}.json")

    def _save(self, pod: pod_pb2.Pod) -> None:
        os.makedirs(self.directory, exist_ok=True)
        temporary = self._path(pod.metadata.uid) + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json_format.MessageToJson(pod))
        os.replace(temporary, self._path(pod.metadata.uid))

    def _unlink(self, uid: str) -> None:
        try:
            os.unlink(self._path(uid))
        except FileNotFoundError:
            pass


# --- the API server -------------------------------------------------------------------------


class ApiSource:
    """Pods bound to this node, through an Informer (a resuming watch).

    A pod being deleted (deletionTimestamp set) stays wanted, as terminating:
    its worker stops it and the kubelet then removes it from the API; it leaves
    when the API's DELETED event comes. Mirror pods (the API's read-only copies
    of this node's static pods) are not run: they go to the mirror handler."""

    def __init__(
        self,
        client: Any,
        node: str,
        config: PodConfig,
        on_mirror_event: Callable[[str, pod_pb2.Pod], None],
    ) -> None:
        self.node = node
        self.config = config
        self._on_mirror_event = on_mirror_event
        self.informer = Informer(client, PODS, field_selector=f"spec.nodeName={node}")
        self.informer.add_handler(self._handle)
        config.expect(SOURCE_API)

    def _handle(self, event_type: str, pod: pod_pb2.Pod, old: pod_pb2.Pod | None) -> None:
        if is_mirror_pod(pod):
            self._on_mirror_event(event_type, pod)
            return
        if event_type == "DELETED":
            self.config.remove_pod(SOURCE_API, pod.metadata.uid)
        else:
            self.config.update_pod(SOURCE_API, pod)

    async def run(self) -> None:
        watch = asyncio.get_running_loop().create_task(self.informer.run())
        try:
            await self.informer.wait_synced()
            self.config.mark_ready(SOURCE_API)
            await watch
        finally:
            watch.cancel()

    def get(self, namespace: str, name: str) -> pod_pb2.Pod | None:
        return self.informer.get(namespace, name)

