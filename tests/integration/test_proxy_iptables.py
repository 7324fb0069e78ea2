"""kube-proxy's iptables mode on the real kernel (iptables-nft here), the same behaviour as nftables.

The behaviour every mode shares (and the test network, the harness and the
safety net) is in proxy_behaviour.py, imported here with `mode` = iptables;
below is what is this mode's own: the chains' layout, a restarted proxy
adopting them (the built-in chains' jumps never doubled, stale chains deleted),
and a node switching between the kernel modes.
"""

from __future__ import annotations

import pytest

# Detailed assertion messages from the shared module too (before it is first imported).
pytest.register_assert_rewrite("tests.integration.proxy_behaviour")

from .proxy_behaviour import *  # noqa: E402, F403 (the shared fixtures and tests: collected here)
from .proxy_behaviour import (  # noqa: E402
    NAMESPACE,
    Harness,
    host_connect,
    iptables_lines,
    names,
    nft_tables,
    sh,
)

BUILTIN_JUMPS = [
    ("filter", "FORWARD"), ("filter", "INPUT"), ("filter", "OUTPUT"),
    ("nat", "OUTPUT"), ("nat", "POSTROUTING"), ("nat", "PREROUTING"),
]


@pytest.fixture(scope="module")
def mode() -> str:
    return "iptables"


def jumps_to(tag: str) -> list[tuple[str, str]]:
    """(table, chain) of every rule outside the node's chains that jumps to one of them."""
    found, table = [], ""
    for line in sh("iptables-save").splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and tag in line and not line.split()[1].endswith(f"-{tag}"):
            found.append((table, line.split()[1]))
    return sorted(found)


def chains_of(tag: str) -> list[str]:
    return [line[1:].split()[0] for line in iptables_lines(tag) if line.startswith(":")]


async def test_the_chains_of_a_node_and_a_restart_adopting_them(testnet):
    first, second = Harness("iptables", testnet), Harness("iptables", testnet)
    await first.start()
    try:
        ip = (await first.serve("layout", ("b1", "b2"), node_port=31999, affinity="ClientIP")).spec.cluster_ip
        gone = (await first.serve("gone", ("b3",))).spec.cluster_ip
        tag = first.tag
        lines = iptables_lines(tag)
        print("\n" + "\n".join(lines))
        chains = chains_of(tag)
        assert all(name.startswith("KYB-") and name.endswith(f"-{tag}") and len(name) <= 28 for name in chains)
        assert jumps_to(tag) == BUILTIN_JUMPS
        assert sum(f"-d {ip}/32 -p tcp -m tcp --dport 80 " in line for line in lines) == 1
        assert sum("--dport 31999 " in line for line in lines) == 1  # the node port, with endpoints: nat only
        assert sum("-m recent --set --name KYB-SEP-" in line for line in lines) == 2  # affinity per endpoint

        # The proxy ends, its chains stay; "gone" is deleted meanwhile. The next proxy of the node
        # adopts the chains in one restore: the jumps stay single, the chains of "gone" go.
        await first.halt()
        for kind, objects in (("endpoints", first.proxier.endpoints), ("service", first.proxier.services)):
            handler = getattr(second.proxier, f"on_{kind}_event")
            handler("ADDED", objects[(NAMESPACE, "layout")])
        await second.start()
        await second.wait()
        assert jumps_to(tag) == BUILTIN_JUMPS
        assert not any(f"-d {gone}/32" in line for line in iptables_lines(tag))
        assert len(chains_of(tag)) == len(chains) - 2  # the service and endpoint chains of "gone"
        assert set(names([await host_connect(ip, 80) for _ in range(6)])) <= {"b1", "b2"}
    finally:
        await first.halt()
        await second.stop()


async def test_a_node_switching_modes_leaves_one_data_path(testnet):
    """Each kernel mode removes the other's rules of its node before adopting (as Kubernetes' proxier)."""
    nft, ipt, nft_again = Harness("nftables", testnet), Harness("iptables", testnet), Harness("nftables", testnet)
    try:
        await nft.start()
        ip = (await nft.serve("switch", ("b1",))).spec.cluster_ip
        await nft.halt()
        await ipt.start()
        await ipt.serve("switch", ("b2",), cluster_ip=ip)
        assert f"table ip {nft.table}" not in nft_tables()
        assert await host_connect(ip, 80) == f"b2 {testnet.gateway}"

        await ipt.halt()
        await nft_again.start()
        await nft_again.serve("switch", ("b3",), cluster_ip=ip)
        assert chains_of(ipt.tag) == [] and jumps_to(ipt.tag) == []
        assert await host_connect(ip, 80) == f"b3 {testnet.gateway}"
    finally:
        await nft.halt()
        await ipt.halt()
        await nft_again.stop()
