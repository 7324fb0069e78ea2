"""Channel targets for one server or several replicas (services/common/transport.py)."""

from __future__ import annotations

import pytest

from services.common.transport import channel_target, server_addresses


def test_one_address_is_the_target_as_given():
    assert channel_target("kube.example:6443") == ("kube.example:6443", [])


def test_several_replicas_are_balanced_and_checked_against_the_first_name():
    target, options = channel_target("10.240.0.1:6443, 10.240.0.1:6453,")
    assert target == "ipv4:10.240.0.1:6443,10.240.0.1:6453"
    assert dict(options) == {
        "grpc.lb_policy_name": "round_robin",
        "grpc.ssl_target_name_override": "10.240.0.1",
        "grpc.default_authority": "10.240.0.1:6443",
    }


@pytest.mark.parametrize("target", ["", " , "])
def test_no_address_is_refused(target):
    with pytest.raises(ValueError, match="no server address"):
        channel_target(target)


def test_several_replicas_must_be_ipv4_addresses():
    with pytest.raises(ValueError, match="kube.example:6443: several servers must be given as IPv4"):
        channel_target("127.0.0.1:6443,kube.example:6443")


def test_server_addresses_splits_and_trims():
    assert server_addresses(" a:1 ,b:2,, ") == ["a:1", "b:2"]
