"""Pods' host ports, published by the kubelet itself (as CNI's portmap plugin does).

Every pod on the kubelet's pod network (podnetwork.py) has an address of the pod
range, host ports or not. A `hostPort` is a DNAT in the kubelet's own network
namespace, from (its `hostIP`, else the node's `--node-ip`):hostPort/protocol to
podIP:containerPort, for packets that arrive from outside (prerouting) and for
the node's own connections (output), as Kubernetes' kubenet hostport manager and
CNI's portmap plugin write it. Docker cannot do it for us: it runs in the root
network namespace, and a node may be a namespace of its own whose addresses
Docker cannot bind. (`--network-plugin=docker` sandboxes are Docker's to
network, and their host ports are still Docker's to publish: dockerspec.py.)

The table
---------
One `ip` table per kubelet, `kyb-hostports-<node>` (simulated nodes share one
kernel and must not overwrite each other's), rewritten whole in one `nft -f`
transaction from the desired state whenever it changes (changes made while a
transaction runs go together in the next one), and deleted when the node has no
host port left:

    map  hostports      host IP . protocol . host port -> goto hostport-<ip>-<proto>-<port>
    map  hostports-any  protocol . host port           -> goto hostport-any-<proto>-<port>
                        (hostIP 0.0.0.0 or "::": every address of the node, `fib daddr type local`)
    hostport-…          ip saddr <pod IP> mark       (hairpin: the pod reaching itself through
                                                      its host port would answer itself directly)
                        ip saddr 127.0.0.0/8 mark    (the node's own loopback connections: the pod
                                                      could not answer 127.0.0.1)
                        meta l4proto tcp dnat to <pod IP>:<container port>
    prerouting, output (nat, -99)  -> the two maps, after kube-proxy's services (-100), as
                                      Kubernetes appends KUBE-HOSTPORTS after KUBE-SERVICES
    postrouting (nat, 100)         -> masquerade marked packets (bit 0x2000, portmap's)

A lookup in a map costs the same whatever the number of host ports. A pod that
reaches another pod's host port on the same bridge is answered through conntrack
only with bridge-nf-call-iptables=1, as for kube-proxy's services (nftables.py);
with it, a hairpin connection leaves by the bridge port it came in by, which
needs the port's hairpin mode (podnetwork.py sets it on every pod's veth).
Kubernetes also deletes the UDP conntrack entries of a newly published port (a
flow seen before its rule keeps its old, untranslated path until it is idle);
this does not, having no conntrack tool to do it with.

Host ports on loopback (the default node IP 127.0.0.1; simulated nodes on
127.0.0.x): the node's own connections are DNATed to a pod on the bridge, which
the kernel allows only with route_localnet on the bridge (as portmap sets it);
the table then also carries kube-proxy's guards: packets from outside to
127.0.0.0/8 that were not DNATed, and loopback-sourced packets leaving by any
interface but `lo` (after the masquerade), are dropped. The sysctl is left on
when the last host port goes, as kube-proxy leaves its own.

Holding the ports
-----------------
DNAT alone would silently take a port's traffic from a process of the node that
listens on it. So, as Kubernetes' hostport manager did, the kubelet opens each
host port itself (TCP: a listening socket; UDP: a bound one; SCTP is not opened,
as Kubernetes agreed in its SCTP KEP, since that would load the sctp module):
a port another process holds is then refused at once, when the pod's sandbox is
made, with the bind error in the pod's status ("cannot open hostport 8080 for
pod web_default: listen tcp 127.0.0.1:8080: bind: address already in use"), and
no process can take it while the pod has it. Connections that reach a held
socket (the table is not written yet) are reset. A socket is closed only once a
transaction without its rules has gone through, so that no other process is
ever given a port the table still sends to a pod.

The kubelet leaves the table in place when it stops (its pods keep running); a
new kubelet rewrites it from the sandboxes it adopts, whose labels carry their
host ports (LABEL_HOST_PORTS), and opens their ports again.
`nft delete table ip kyb-hostports-<node>` removes it (`cleanup_commands`).
"""

from __future__ import annotations

import asyncio
import base64
import errno as errno_codes
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Sequence

from kybernetes.v1 import pod_pb2
from services.common.log import get_logger

from .containers import ContainerInfo

log = get_logger(module="kubelet.hostports")

TABLE_PREFIX = "kyb-hostports-"
# Room for the node's part of a table name (nft allows 255 bytes; node names are up to 253).
MAX_NODE_PART = 64
# On an infra container on the pod network: the pod's host ports as its spec gave them (JSON),
# so that a restarted kubelet can write the table before any source has sent it the pod.
LABEL_HOST_PORTS = "io.kybernetes.pod.host-ports"
# The packet mark bit that asks for masquerading (CNI portmap's default; kube-proxy's is 0x4000).
MASQUERADE_MARK = 0x2000
# After kube-proxy's nat chains (-100): a service's node port wins over a host port.
DNAT_PRIORITY = -99
SRCNAT_PRIORITY = 100
# kube-proxy's: after the masquerade, so that only unmasqueraded loopback sources are dropped.
GUARD_POSTROUTING_PRIORITY = 110
ANY_ADDRESS = "0.0.0.0"
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
PROTOCOLS = ("TCP", "UDP", "SCTP")
# Elements per `add element` command: keeps the lines of a long script reasonable.
ELEMENTS_PER_COMMAND = 1000
# nft stores at most 128 bytes of a comment.
MAX_COMMENT = 120
NFT = "/usr/sbin/nft"

MAP_SPECIFIC = "hostports"
MAP_ANY = "hostports-any"

RunNft = Callable[[str], Awaitable[None]]


class HostPortError(Exception):
    """A host port cannot be had (taken, an address the node lacks, an IPv6 hostIP),
    or the table could not be written (nft's message)."""


# --- what a pod asks for --------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class PortMapping:
    """One hostPort of a pod, as its spec gives it."""

    host_ip: str  # "": the node's IP
    protocol: str  # TCP, UDP or SCTP
    host_port: int
    container_port: int


@dataclass(frozen=True, order=True)
class HostPort:
    """An address, protocol and port of the node that a pod holds."""

    address: str  # ANY_ADDRESS: every address of the node
    protocol: str  # tcp, udp or sctp, as nft and Go's socket errors spell it
    port: int

    @property
    def any_address(self) -> bool:
        return self.address == ANY_ADDRESS

    def conflicts(self, other: HostPort) -> bool:
        """Whether the two cannot both be had: the same port and protocol on the same
        address, or on every address (as the kernel refuses the second bind)."""
        return (
            self.protocol == other.protocol
            and self.port == other.port
            and (self.address == other.address or self.any_address or other.any_address)
        )

    def __str__(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol.upper()}"


@dataclass(frozen=True)
class Published:
    """One host port's DNAT to a pod."""

    host: HostPort
    pod_ip: str
    container_port: int
    pod: str  # namespace/name, for comments and logs


def pod_port_mappings(pod: pod_pb2.Pod) -> tuple[PortMapping, ...]:
    """The pod's host ports (none for a pod on the host's network: its processes bind them)."""
    if pod.spec.host_network:
        return ()
    return tuple(sorted(
        PortMapping(port.host_ip, (port.protocol or "TCP").upper(), port.host_port, port.container_port)
        for container in pod.spec.containers
        for port in container.ports
        if port.host_port
    ))


def encode_mappings(mappings: Sequence[PortMapping]) -> str:
    """LABEL_HOST_PORTS' value."""
    return json.dumps([[m.host_ip, m.protocol, m.host_port, m.container_port] for m in mappings],
                      separators=(",", ":"))


def decode_mappings(text: str) -> tuple[PortMapping, ...]:
    """LABEL_HOST_PORTS' value back; ValueError if it is not one."""
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("not a list")
        mappings = tuple(PortMapping(str(ip), str(protocol), int(host), int(container))
                         for ip, protocol, host, container in items)
    except (TypeError, ValueError) as error:
        raise ValueError(f"label {LABEL_HOST_PORTS}={text!r}: {error}") from None
    return tuple(sorted(mappings))


def sandbox_mappings(sandbox: ContainerInfo) -> tuple[PortMapping, ...]:
    """The host ports a sandbox was made with (its label); none if it has no (readable) label."""
    text = sandbox.labels.get(LABEL_HOST_PORTS)
    if not text:
        return ()
    try:
        return decode_mappings(text)
    except ValueError as error:
        log.warning("host_ports_label_unreadable", pod=sandbox.pod_key, sandbox=sandbox.id[:12], error=str(error))
        return ()


def resolve(mapping: PortMapping, node_ip: str) -> HostPort:
    """Where the mapping listens: its hostIP, else the node's IP; 0.0.0.0 and :: are every
    address of the node. HostPortError for what this IPv4 pod network cannot publish."""
    protocol = mapping.protocol.upper()
    if protocol not in PROTOCOLS:
        raise HostPortError(f"hostPort {mapping.host_port}: protocol {mapping.protocol!r} is not supported")
    if not 0 < mapping.host_port < 65536 or not 0 < mapping.container_port < 65536:
        raise HostPortError(f"hostPort {mapping.host_port}: port out of range")
    text = mapping.host_ip or node_ip
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise HostPortError(f"hostPort {mapping.host_port}: hostIP {text!r} is not an IP address") from None
    if address.is_unspecified:
        return HostPort(ANY_ADDRESS, protocol.lower(), mapping.host_port)
    if address.version != 4:
        raise HostPortError(
            f"hostPort {mapping.host_port}: hostIP {text} is IPv6, and the pod network is IPv4"
        )
    return HostPort(str(address), protocol.lower(), mapping.host_port)


def pod_full_name(pod: str) -> str:
    """namespace/name as Kubernetes names a pod in its hostport messages: name_namespace."""
    namespace, _, name = pod.partition("/")
    return f"{name}_{namespace}"


def open_failure(host: HostPort, pod: str, reason: str) -> str:
    """Kubernetes' message for a host port that could not be opened (with Go's error text)."""
    return (
        f"cannot open hostport {host.port} for pod {pod_full_name(pod)}: "
        f"listen {host.protocol} {host.address}:{host.port}: bind: {reason}"
    )


def needs_route_localnet(published: Iterable[Published]) -> bool:
    """Whether the node's own connections are DNATed from a loopback address to the bridge."""
    return any(p.host.any_address or ipaddress.IPv4Address(p.host.address) in LOOPBACK for p in published)


# --- the table --------------------------------------------------------------------------------


def table_name(node: str) -> str:
    """The table of the kubelet of `node`: `kyb-hostports-<node>`, sanitised for nft; a long
    name is cut and given a hash of the whole, so that two nodes never share a table."""
    part = _sanitize(node.lower()) or "node"
    if len(part) > MAX_NODE_PART:
        digest = base64.b32encode(hashlib.sha256(node.encode()).digest())[:8].decode().lower()
        part = f"{part[:MAX_NODE_PART - 9]}-{digest}"
    return TABLE_PREFIX + part


def _sanitize(text: str) -> str:
    # nft identifiers: letters, digits, '/', '-', '_', '.' (a letter first: the prefix is one).
    return re.sub(r"[^A-Za-z0-9/._-]", "_", text)


def _comment(text: str) -> str:
    return '"' + text.replace('"', "'").replace("\\", "/")[:MAX_COMMENT] + '"'


def chain_name(host: HostPort) -> str:
    address = "any" if host.any_address else host.address
    return f"hostport-{address}-{host.protocol}-{host.port}"


def cleanup_commands(table: str) -> list[str]:
    """Deletes the table, whether or not it exists."""
    return [f"add table ip {table}", f"delete table ip {table}"]


def script(commands: Sequence[str]) -> str:
    return "".join(f"{command}\n" for command in commands)


def table_commands(
    table: str, published: Sequence[Published], *, loopback_guards: bool
) -> tuple[list[str], list[Published]]:
    """The nft commands that replace the table with one publishing `published`, in one
    transaction (no table when there is nothing to publish), and the entries left out
    because an earlier one has their address, protocol and port (the reservations keep
    that from happening; this keeps one bad entry from failing the whole transaction)."""
    kept: dict[HostPort, Published] = {}
    duplicates: list[Published] = []
    for entry in published:
        if entry.host in kept:
            duplicates.append(entry)
        else:
            kept[entry.host] = entry
    commands = cleanup_commands(table)
    if not kept:
        return commands, duplicates
    t = f"ip {table}"
    mark = f"0x{MASQUERADE_MARK:x}"
    purpose = _comment("the kubelet: host ports of the node's pods (services/kubelet/hostports.py)")
    commands += [
        f"add table {t} {{ comment {purpose}; }}",
        f"add map {t} {MAP_SPECIFIC} {{ type ipv4_addr . inet_proto . inet_service : verdict; "
        f"comment {_comment('host IP . protocol . host port')}; }}",
        f"add map {t} {MAP_ANY} {{ type inet_proto . inet_service : verdict; "
        f"comment {_comment('protocol . host port, on every address of the node')}; }}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority {DNAT_PRIORITY}; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority {DNAT_PRIORITY}; policy accept; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority {SRCNAT_PRIORITY}; policy accept; }}",
        f"add chain {t} hostports",
        f"add chain {t} masquerading",
        f"add rule {t} prerouting jump hostports",
        f"add rule {t} output jump hostports",
        f"add rule {t} hostports ip daddr . meta l4proto . th dport vmap @{MAP_SPECIFIC}",
        f"add rule {t} hostports fib daddr type local meta l4proto . th dport vmap @{MAP_ANY}",
        f"add rule {t} postrouting jump masquerading",
        f"add rule {t} masquerading meta mark & {mark} == 0 return",
        # Cleared so that nothing further down (a tunnel) masquerades the packet again.
        f"add rule {t} masquerading meta mark set meta mark ^ {mark}",
        f"add rule {t} masquerading masquerade fully-random",
    ]
    if loopback_guards:
        # route_localnet lets 127.0.0.0/8 be routed: keep it from crossing a real interface.
        commands += [
            f"add chain {t} filter-input {{ type filter hook input priority 0; policy accept; }}",
            f"add chain {t} filter-postrouting {{ type filter hook postrouting priority "
            f"{GUARD_POSTROUTING_PRIORITY}; policy accept; }}",
            f"add rule {t} filter-input iifname != \"lo\" ip saddr != 127.0.0.0/8 ip daddr 127.0.0.0/8 "
            f"ct status & dnat == 0 ct state new counter drop comment \"route_localnet: outside to loopback\"",
            f"add rule {t} filter-postrouting oifname != \"lo\" ip saddr 127.0.0.0/8 counter drop "
            f"comment \"route_localnet: loopback source leaving\"",
        ]
    specific: list[str] = []
    every: list[str] = []
    for host in sorted(kept):
        entry = kept[host]
        chain = chain_name(host)
        commands += [
            f"add chain {t} {chain}",
            f"add rule {t} {chain} ip saddr {entry.pod_ip} meta mark set meta mark | {mark} "
            f"comment \"hairpin\"",
            f"add rule {t} {chain} ip saddr 127.0.0.0/8 meta mark set meta mark | {mark} "
            f"comment \"from the node's loopback\"",
            f"add rule {t} {chain} meta l4proto {host.protocol} dnat to {entry.pod_ip}:{entry.container_port} "
            f"comment {_comment(f'{entry.pod} {host}')}",
        ]
        if host.any_address:
            every.append(f"{host.protocol} . {host.port} : goto {chain}")
        else:
            specific.append(f"{host.address} . {host.protocol} . {host.port} : goto {chain}")
    for name, elements in ((MAP_SPECIFIC, specific), (MAP_ANY, every)):
        for start in range(0, len(elements), ELEMENTS_PER_COMMAND):
            commands.append(f"add element {t} {name} {{ {', '.join(elements[start:start + ELEMENTS_PER_COMMAND])} }}")
    return commands, duplicates


# --- the kernel -------------------------------------------------------------------------------


def nft_binary() -> str:
    return shutil.which("nft") or NFT


async def run_nft(text: str) -> None:
    """One `nft -f -` transaction; HostPortError with nft's message if it is refused."""
    try:
        process = await asyncio.create_subprocess_exec(
            nft_binary(), "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise HostPortError(f"cannot run nft: {error}") from None
    _, err = await process.communicate(text.encode())
    if process.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise HostPortError(f"nft: {message[-2000:] or f'exit {process.returncode}'}")


def enable_route_localnet(bridge: str) -> bool:
    """net.ipv4.conf.<bridge>.route_localnet=1 in this process's network namespace;
    True if it was off. OSError when it cannot be had (no bridge yet, /proc/sys read-only)."""
    path = Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
    if path.read_text().strip() == "1":
        return False
    path.write_text("1\n")
    return True


def open_port(host: HostPort) -> socket.socket | None:
    """A socket holding the host port (None for SCTP, which is not held); OSError if it is taken."""
    if host.protocol == "sctp":
        return None
    kind = socket.SOCK_STREAM if host.protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # As Go's net.Listen: a connection of a process that just closed the port (TIME_WAIT)
            # does not keep us from it; listening, we still conflict with every other bind.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # No SO_REUSEADDR for UDP: with it on both sides two sockets may share the port.
        sock.bind((host.address, host.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_reason(error: OSError) -> str:
    code = error.errno or 0
    return os.strerror(code).lower() if code else str(error)


def _refuse(sock: socket.socket) -> None:
    """What reaches a held socket found no rule (the table is not written yet): a TCP
    connection is reset, as if nothing listened; a datagram is dropped."""
    try:
        if sock.type == socket.SOCK_STREAM:
            connection, _ = sock.accept()
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
        else:
            sock.recv(65535)
    except OSError:
        pass


# --- the manager ------------------------------------------------------------------------------


@dataclass
class _Held:
    uid: str
    pod: str
    sock: socket.socket | None


@dataclass(frozen=True)
class _PodPorts:
    pod: str
    pod_ip: str
    ports: tuple[tuple[HostPort, int], ...]  # (where, container port)

    def published(self) -> list[Published]:
        return [Published(host, self.pod_ip, container_port, self.pod) for host, container_port in self.ports]


class HostPortManager:
    """The node's host ports: the sockets that hold them and the table that DNATs them.

    reserve() when a sandbox is made (a port that cannot be had fails it), publish()
    once it is wired (its rules), remove() when it is torn down; adopt() at start."""

    def __init__(
        self, node: str, node_ip: str, bridge: str, *, nft: RunNft | None = None, set_route_localnet: bool = True
    ) -> None:
        self.node = node
        self.node_ip = node_ip
        self.bridge = bridge
        self.table = table_name(node)
        self._nft: RunNft = nft or run_nft
        self._set_route_localnet = set_route_localnet
        self._held: dict[HostPort, _Held] = {}
        self._pods: dict[str, _PodPorts] = {}
        # Sockets whose rules are gone from the desired state: closed once a transaction of
        # at least that version went through.
        self._retiring: list[tuple[int, HostPort, socket.socket | None]] = []
        # The desired state's version, and the one the kernel holds (unknown at first:
        # the first transaction writes the table whatever it is).
        self._version = 1
        self._applied = 0
        self._lock = asyncio.Lock()
        self._route_localnet_warned = False
        self._log = log.bind(node=node, table=f"ip {self.table}")

    # --- the pod workers ------------------------------------------------------------------

    async def reserve(self, uid: str, pod: str, mappings: Sequence[PortMapping]) -> None:
        """Opens the host ports of pod `uid` (namespace/name `pod`) that it does not hold yet,
        and lets go of those it holds and no longer asks for. HostPortError (Kubernetes'
        message) if one cannot be had: then none of those it asked for are newly held."""
        wanted = {resolve(mapping, self.node_ip) for mapping in mappings}
        stale = [host for host, held in self._held.items() if held.uid == uid and host not in wanted]
        if stale:
            await self._unpublish(uid, stale)
        opened: list[HostPort] = []
        try:
            for host in sorted(wanted):
                held = self._held.get(host)
                if held is not None and held.uid == uid:
                    continue
                holder = next(
                    (other for where, other in self._held.items() if other.uid != uid and where.conflicts(host)), None
                )
                if holder is not None:
                    self._log.warning("host_port_held_by_another_pod", pod=pod, host_port=str(host), holder=holder.pod)
                    raise HostPortError(open_failure(host, pod, os.strerror(errno_codes.EADDRINUSE).lower()))
                try:
                    sock = open_port(host)
                except OSError as error:
                    self._log.warning("host_port_unavailable", pod=pod, host_port=str(host), error=str(error))
                    raise HostPortError(open_failure(host, pod, _bind_reason(error))) from None
                self._hold(host, _Held(uid, pod, sock))
                opened.append(host)
        except HostPortError:
            for host in opened:
                self._close(self._held.pop(host).sock)
            raise
        if opened:
            self._log.info("host_ports_opened", pod=pod, host_ports=[str(host) for host in opened])

    async def publish(self, uid: str, pod: str, pod_ip: str, mappings: Sequence[PortMapping]) -> None:
        """The rules of the running, wired sandbox of pod `uid` at `pod_ip`, made with
        `mappings` (its label): in the kernel when this returns; HostPortError if its
        ports cannot be had or the table written. No mappings: as remove()."""
        if not mappings:
            await self.remove(uid)
            return
        await self.reserve(uid, pod, mappings)
        ports = tuple(sorted((resolve(m, self.node_ip), m.container_port) for m in mappings))
        entry = _PodPorts(pod, pod_ip, ports)
        changed = self._pods.get(uid) != entry
        if changed:
            self._pods[uid] = entry
            self._version += 1
        await self._sync()
        if changed:
            self._log.info("host_ports_published", pod=pod, pod_ip=pod_ip,
                           host_ports=[f"{host} -> {container_port}" for host, container_port in ports])

    async def remove(self, uid: str) -> None:
        """The pod's sandbox is gone: its rules leave the table and its ports are let go (once
        the table without them is written). Never raises: a table that cannot be written now
        loses the rules in the next transaction that can."""
        entry = self._pods.pop(uid, None)
        if entry is not None:
            self._version += 1
        held = [host for host, holder in self._held.items() if holder.uid == uid]
        for host in held:
            self._retire(host)
        if entry is None and not held:
            return  # nothing of it here: a pod without host ports costs no transaction
        try:
            await self._sync()
        except HostPortError as error:
            self._log.warning("host_ports_removal_pending", pod_uid=uid, error=str(error))
            return
        if entry is not None:
            self._log.info("host_ports_removed", pod=entry.pod, host_ports=[str(host) for host, _ in entry.ports])

    # --- the kubelet ----------------------------------------------------------------------------

    async def adopt(self, containers: Iterable[ContainerInfo]) -> None:
        """At start: the table rewritten from the running sandboxes on the pod network (their
        labels say their host ports), and their ports held again. Logs what fails: the pods
        run on, and the next change writes the table again."""
        for info in containers:
            if not (info.is_infra and info.running and info.on_pod_network and info.pod_uid):
                continue
            mappings = sandbox_mappings(info)
            if not mappings:
                continue
            ports: list[tuple[HostPort, int]] = []
            for mapping in mappings:
                try:
                    host = resolve(mapping, self.node_ip)
                except HostPortError as error:
                    self._log.warning("host_port_not_adopted", pod=info.pod_key, error=str(error))
                    continue
                ports.append((host, mapping.container_port))
                if host in self._held:
                    continue
                try:
                    self._hold(host, _Held(info.pod_uid, info.pod_key, open_port(host)))
                except OSError as error:
                    # Taken while no kubelet held it: the rules still send its traffic to the pod.
                    self._log.warning("host_port_taken_while_kubelet_was_down", pod=info.pod_key,
                                      host_port=str(host), error=str(error))
            self._pods[info.pod_uid] = _PodPorts(info.pod_key, info.pod_ip, tuple(sorted(ports)))
        self._version += 1
        try:
            # With nothing to publish this deletes a table left by pods gone while no kubelet ran.
            await self._sync()
        except HostPortError as error:
            if self._pods:
                self._log.error("host_ports_table_not_written", error=str(error))
            else:
                self._log.debug("host_ports_table_not_cleaned", error=str(error))
            return
        self._log.info("host_ports_adopted", pods=len(self._pods), host_ports=len(self._held))

    def close(self) -> None:
        """Lets go of every socket (the table stays: the pods run on)."""
        for held in self._held.values():
            self._close(held.sock)
        for _, _, sock in self._retiring:
            self._close(sock)
        self._held.clear()
        self._retiring.clear()

    def published(self) -> list[Published]:
        """What the table should hold now, in publishing order."""
        return [entry for pod in self._pods.values() for entry in pod.published()]

    def held(self) -> dict[HostPort, str]:
        """The ports held, and by which pod's uid."""
        return {host: held.uid for host, held in self._held.items()}

    # --- inside ---------------------------------------------------------------------------------

    async def _unpublish(self, uid: str, hosts: Sequence[HostPort]) -> None:
        """Ports the pod no longer asks for (its spec changed): rules first, then the sockets."""
        entry = self._pods.get(uid)
        if entry is not None:
            kept = tuple(port for port in entry.ports if port[0] not in hosts)
            if kept != entry.ports:
                self._pods[uid] = _PodPorts(entry.pod, entry.pod_ip, kept)
                self._version += 1
        for host in hosts:
            self._retire(host)
        await self._sync()

    async def _sync(self) -> None:
        """Writes the whole table as the desired state now is, unless a transaction begun
        since the last change did (changes made while one runs go together in the next)."""
        wanted = self._version
        async with self._lock:
            if self._applied >= wanted:
                return
            version = self._version
            published = self.published()
            loopback = needs_route_localnet(published)
            if loopback:
                await self._prepare_route_localnet()
            commands, duplicates = table_commands(self.table, published, loopback_guards=loopback)
            for entry in duplicates:
                self._log.warning("host_port_published_twice", pod=entry.pod, host_port=str(entry.host))
            await self._nft(script(commands))
            self._applied = version
            self._close_retired()
            self._log.debug("host_ports_table_written", host_ports=len(published) - len(duplicates),
                            version=version)

    async def _prepare_route_localnet(self) -> None:
        if not self._set_route_localnet:
            return
        try:
            if await asyncio.to_thread(enable_route_localnet, self.bridge):
                self._log.info("route_localnet_enabled", bridge=self.bridge,
                               reason="host ports on a loopback address, for the node's own connections")
        except OSError as error:
            if not self._route_localnet_warned:
                self._route_localnet_warned = True
                self._log.warning("route_localnet_unavailable", bridge=self.bridge, error=str(error),
                                  effect="the node's own connections to host ports on loopback addresses fail")

    def _hold(self, host: HostPort, held: _Held) -> None:
        self._held[host] = held
        if held.sock is not None:
            asyncio.get_running_loop().add_reader(held.sock.fileno(), _refuse, held.sock)

    def _retire(self, host: HostPort) -> None:
        held = self._held.pop(host)
        self._retiring.append((self._version, host, held.sock))
        self._close_retired()

    def _close_retired(self) -> None:
        keep = []
        for version, host, sock in self._retiring:
            if version <= self._applied:
                self._close(sock)
            else:
                keep.append((version, host, sock))
        self._retiring = keep

    @staticmethod
    def _close(sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        except (RuntimeError, ValueError):
            pass  # no loop (close() at exit) or already closed
        sock.close()
