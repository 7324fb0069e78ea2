"""kube-dns: cluster DNS from Watch, after CoreDNS's kubernetes plugin.

- `records`: what each Service (and, when headless, its Endpoints) puts in DNS, and the
  in-memory index of those records (owner name -> type -> rdata), updated per service.
- `answer`: the pure answering: a parsed query and the index in, a response (or "forward
  it") out. Table-tested without sockets.
- `controller`: the informers' handlers that keep the index current (shared runtime).
- `forwarder`: names outside the cluster go to upstream resolvers (UDP, TCP on truncation).
- `server`: the UDP and TCP listeners.
- `main`: flags and wiring.
"""
