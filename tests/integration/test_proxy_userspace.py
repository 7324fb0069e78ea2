"""kube-proxy's userspace mode on the real kernel: the relay, reached at cluster IPs through portals.

The behaviour every mode shares (and the test network, the harness and the
safety net) is in proxy_behaviour.py, imported here with `mode` = userspace;
there the relay's own behaviour shows where the modes differ (the exact
rotation, the node's address as the source, a refusing endpoint skipped).
Below is what is this mode's own: where the relay listens and what leads there.
The relay's data path itself (splice, half-close, back-pressure, UDP sessions)
is tested on loopback in test_proxy_forwarding.py.
"""

from __future__ import annotations

import asyncio

import pytest

from services.proxy.userspace import UserspaceProxier

# Detailed assertion messages from the shared module too (before it is first imported).
pytest.register_assert_rewrite("tests.integration.proxy_behaviour")

from .proxy_behaviour import *  # noqa: E402, F403 (the shared fixtures and tests: collected here)
from .proxy_behaviour import (  # noqa: E402
    NAMESPACE,
    REFUSED_WITHIN,
    Harness,
    host_connect,
    host_refused,
    make_service,
    names,
)


@pytest.fixture(scope="module")
def mode() -> str:
    return "userspace"


async def test_the_relay_is_on_loopback_and_only_the_portal_leads_there(proxier, testnet):
    relay = proxier.proxier.relay
    service = await proxier.serve("portal", ("b1", "b2"))
    ip = service.spec.cluster_ip
    port = relay.relay_port(NAMESPACE, "portal", "http")
    assert relay.ports[(NAMESPACE, "portal", "http")].listener.sock.getsockname() == ("127.0.0.1", port)
    assert f"meta l4proto tcp dnat to 127.0.0.1:{port}" in proxier.rules()
    # The relay's port is not reachable at the node's address: only the cluster IP leads there.
    [result] = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, port)
    assert result.get("error") == "ConnectionRefusedError", result

    # The service port's number changes: the listener stays (an open connection carries on), the portal moves.
    reader, writer = await asyncio.open_connection(ip, 80)
    assert (await reader.readline()).split()[0] in (b"b1", b"b2")
    moved = make_service(testnet, "portal", cluster_ip=ip)
    moved.spec.ports[0].port = 81
    proxier.proxier.on_service_event("MODIFIED", moved)
    await proxier.wait()
    assert relay.relay_port(NAMESPACE, "portal", "http") == port
    assert names([await host_connect(ip, 81) for _ in range(2)]) in (["b1", "b2"], ["b2", "b1"])
    assert await host_refused(ip, 80) < REFUSED_WITHIN
    writer.write(b"still there?\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"still there?\n"
    writer.close()


async def test_a_relay_on_all_addresses_is_reached_by_redirect(testnet):
    harness = Harness("userspace", testnet, bind_address="0.0.0.0")
    await harness.start()
    try:
        ip = (await harness.serve("everywhere", ("b3",), node_port=31998)).spec.cluster_ip
        assert isinstance(harness.proxier, UserspaceProxier)
        port = harness.proxier.relay.relay_port(NAMESPACE, "everywhere", "http")
        assert f"meta l4proto tcp redirect to :{port}" in harness.rules()
        assert await host_connect(ip, 80) == f"b3 {testnet.gateway}"
        [result] = await asyncio.to_thread(testnet.ns_connect, "c", ip, 80)
        assert result.get("reply") == f"b3 {testnet.gateway}", result
        [result] = await asyncio.to_thread(testnet.ns_connect, "c", testnet.gateway, 31998)
        assert result.get("reply") == f"b3 {testnet.gateway}", result
    finally:
        await harness.stop()
