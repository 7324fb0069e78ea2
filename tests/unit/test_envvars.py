"""Service variables and $(VAR) expansion, as Kubernetes' kubelet makes them
(pkg/kubelet/envvars, third_party/forked/golang/expansion, makeEnvironmentVariables)."""

from __future__ import annotations

import pytest

from kybernetes.v1 import pod_pb2, service_pb2
from services.kubelet.envvars import (
    container_environment,
    expand,
    expand_command_and_args,
    mapping_for,
    pod_service_environment,
    service_environment,
    services_for_pod,
)


def _service(name: str, cluster_ip: str, *ports: tuple[str, int, str], namespace: str = "ns") -> service_pb2.Service:
    service = service_pb2.Service()
    service.metadata.name = name
    service.metadata.namespace = namespace
    service.spec.cluster_ip = cluster_ip
    for port_name, port, protocol in ports:
        service.spec.ports.add(name=port_name, port=port, protocol=protocol)
    return service


def _pod(namespace: str = "ns", enable_service_links: bool | None = None) -> pod_pb2.Pod:
    pod = pod_pb2.Pod()
    pod.metadata.name = "p"
    pod.metadata.namespace = namespace
    if enable_service_links is not None:
        pod.spec.enable_service_links = enable_service_links
    return pod


# --- FromServices ----------------------------------------------------------------------------


@pytest.mark.parametrize(("services", "expected"), [
    pytest.param(
        [_service("foo-bar", "1.2.3.4", ("", 8080, "TCP"))],
        {
            "FOO_BAR_SERVICE_HOST": "1.2.3.4",
            "FOO_BAR_SERVICE_PORT": "8080",
            "FOO_BAR_PORT": "tcp://1.2.3.4:8080",
            "FOO_BAR_PORT_8080_TCP": "tcp://1.2.3.4:8080",
            "FOO_BAR_PORT_8080_TCP_PROTO": "tcp",
            "FOO_BAR_PORT_8080_TCP_PORT": "8080",
            "FOO_BAR_PORT_8080_TCP_ADDR": "1.2.3.4",
        },
        id="dashes-become-underscores",
    ),
    pytest.param(
        [_service("abc-123", "1.2.3.5", ("", 8081, "UDP"))],
        {
            "ABC_123_SERVICE_HOST": "1.2.3.5",
            "ABC_123_SERVICE_PORT": "8081",
            "ABC_123_PORT": "udp://1.2.3.5:8081",
            "ABC_123_PORT_8081_UDP": "udp://1.2.3.5:8081",
            "ABC_123_PORT_8081_UDP_PROTO": "udp",
            "ABC_123_PORT_8081_UDP_PORT": "8081",
            "ABC_123_PORT_8081_UDP_ADDR": "1.2.3.5",
        },
        id="udp",
    ),
    pytest.param(
        [_service("q-u-u-x", "9.8.7.6", ("", 8082, ""), ("8083", 8083, ""))],
        {
            "Q_U_U_X_SERVICE_HOST": "9.8.7.6",
            "Q_U_U_X_SERVICE_PORT": "8082",
            "Q_U_U_X_SERVICE_PORT_8083": "8083",
            "Q_U_U_X_PORT": "tcp://9.8.7.6:8082",
            "Q_U_U_X_PORT_8082_TCP": "tcp://9.8.7.6:8082",
            "Q_U_U_X_PORT_8082_TCP_PROTO": "tcp",
            "Q_U_U_X_PORT_8082_TCP_PORT": "8082",
            "Q_U_U_X_PORT_8082_TCP_ADDR": "9.8.7.6",
            "Q_U_U_X_PORT_8083_TCP": "tcp://9.8.7.6:8083",
            "Q_U_U_X_PORT_8083_TCP_PROTO": "tcp",
            "Q_U_U_X_PORT_8083_TCP_PORT": "8083",
            "Q_U_U_X_PORT_8083_TCP_ADDR": "9.8.7.6",
        },
        id="first-port-unnamed-second-named-protocol-defaults-to-tcp",
    ),
    pytest.param(
        [_service("multi", "10.0.0.7", ("http", 80, "TCP"), ("dns-udp", 53, "UDP"))],
        {
            "MULTI_SERVICE_HOST": "10.0.0.7",
            "MULTI_SERVICE_PORT": "80",
            "MULTI_SERVICE_PORT_HTTP": "80",
            "MULTI_SERVICE_PORT_DNS_UDP": "53",
            "MULTI_PORT": "tcp://10.0.0.7:80",
            "MULTI_PORT_80_TCP": "tcp://10.0.0.7:80",
            "MULTI_PORT_80_TCP_PROTO": "tcp",
            "MULTI_PORT_80_TCP_PORT": "80",
            "MULTI_PORT_80_TCP_ADDR": "10.0.0.7",
            "MULTI_PORT_53_UDP": "udp://10.0.0.7:53",
            "MULTI_PORT_53_UDP_PROTO": "udp",
            "MULTI_PORT_53_UDP_PORT": "53",
            "MULTI_PORT_53_UDP_ADDR": "10.0.0.7",
        },
        id="named-ports-and-link-variables-per-port",
    ),
    pytest.param([_service("headless", "None", ("", 80, "TCP"))], {}, id="headless-skipped"),
    pytest.param([_service("pending", "", ("", 80, "TCP"))], {}, id="no-cluster-ip-skipped"),
])
def test_from_services(services: list[service_pb2.Service], expected: dict[str, str]) -> None:
    assert service_environment(services) == expected


def test_from_services_keeps_the_variables_of_every_service() -> None:
    env = service_environment([_service("a", "10.0.0.1", ("", 1, "TCP")), _service("b", "10.0.0.2", ("", 2, "TCP"))])
    assert env["A_SERVICE_HOST"] == "10.0.0.1" and env["B_SERVICE_HOST"] == "10.0.0.2"
    assert len(env) == 14


# --- which services a pod sees (getServiceEnvVarMap) ------------------------------------------

MASTER = _service("kubernetes", "10.0.0.1", ("https", 443, "TCP"), namespace="default")
OWN = _service("web", "10.0.0.2", ("", 80, "TCP"))
OTHER_NAMESPACE = _service("db", "10.0.0.3", ("", 5432, "TCP"), namespace="other")
OWN_HEADLESS = _service("stateful", "None", ("", 80, "TCP"))


@pytest.mark.parametrize(("namespace", "links", "expected"), [
    pytest.param("ns", True, ["kubernetes", "web"], id="links-on-own-namespace-and-master"),
    pytest.param("ns", False, ["kubernetes"], id="links-off-only-the-master-service"),
    pytest.param("default", False, ["kubernetes"], id="links-off-in-default"),
    pytest.param("other", True, ["db", "kubernetes"], id="other-namespace"),
    pytest.param("empty", True, ["kubernetes"], id="namespace-without-services"),
])
def test_services_for_pod(namespace: str, links: bool, expected: list[str]) -> None:
    chosen = services_for_pod([MASTER, OWN, OTHER_NAMESPACE, OWN_HEADLESS], namespace, links)
    assert [service.metadata.name for service in chosen] == expected


def test_a_service_of_the_pods_namespace_named_like_the_master_wins() -> None:
    own_kubernetes = _service("kubernetes", "10.9.9.9", ("", 80, "TCP"))
    chosen = services_for_pod([own_kubernetes, MASTER], "ns", True)
    assert [service.spec.cluster_ip for service in chosen] == ["10.9.9.9"]
    chosen = services_for_pod([MASTER, own_kubernetes], "ns", True)
    assert [service.spec.cluster_ip for service in chosen] == ["10.9.9.9"]


@pytest.mark.parametrize(("links", "has_web"), [
    pytest.param(None, True, id="unset-means-true"),
    pytest.param(True, True, id="true"),
    pytest.param(False, False, id="false-drops-service-host-and-port-too"),
])
def test_enable_service_links(links: bool | None, has_web: bool) -> None:
    env = pod_service_environment([MASTER, OWN], _pod(enable_service_links=links))
    assert ("WEB_SERVICE_HOST" in env) == has_web
    assert ("WEB_PORT" in env) == has_web
    assert env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"


# --- expansion (expand_test.go) ------------------------------------------------------------

CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}
EXPANSION_CASES = [
    ("whole string", "$(VAR_A)", "A"),
    ("repeat", "$(VAR_A)-$(VAR_A)", "A-A"),
    ("beginning", "$(VAR_A)-1", "A-1"),
    ("middle", "___$(VAR_B)___", "___B___"),
    ("end", "___$(VAR_C)", "___C"),
    ("compound", "$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("escape & expand", "$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("compound escape", "$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("mixed in escapes", "f000-$$VAR_A", "f000-$VAR_A"),
    ("backslash escape ignored", "foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("backslash escape ignored 2", "foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("lots of backslashes", "foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("nested var references", "$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("nested var references second type", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("value is a reference", "$(VAR_REF)", "$(VAR_A)"),
    ("value is a reference x 2", "%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("empty var", "foo$(VAR_EMPTY)bar", "foobar"),
    ("unterminated expression", "foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("expression without operator", "f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("shell special vars pass through", "$?_boo_$!", "$?_boo_$!"),
    ("bare operators are ignored", "$VAR_A", "$VAR_A"),
    ("undefined vars are passed through", "$(VAR_DNE)", "$(VAR_DNE)"),
    ("multiple (even) operators, var undefined", "$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("multiple (even) operators, var defined", "$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("multiple (odd) operators, var undefined", "$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("multiple (odd) operators, var defined", "$$$$$$$(VAR_A)", "$$$A"),
    ("missing open expression", "$VAR_A)", "$VAR_A)"),
    ("shell syntax ignored", "${VAR_A}", "${VAR_A}"),
    ("trailing incomplete expression not consumed", "$(VAR_B)_______$(A", "B_______$(A"),
    ("trailing incomplete expression, no content, is not consumed", "$(VAR_C)_______$(", "C_______$("),
    ("operator at end of input string is preserved", "$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("shell escaped incomplete expr", "foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("lots of $( in middle", "--$($($($($--", "--$($($($($--"),
    ("lots of $( in beginning", "$($($($($--foo$(", "$($($($($--foo$("),
    ("lots of $( at end", "foo0--$($($($(", "foo0--$($($($("),
    ("escaped operators in variable names are not escaped", "$(foo$$var)", "$(foo$$var)"),
    ("newline not expanded", "\n", "\n"),
    ("empty", "", ""),
    ("lone operator", "$", "$"),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=name) for name, t, e in EXPANSION_CASES])
def test_expand(text: str, expected: str) -> None:
    assert expand(text, CONTEXT) == expected


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=name) for name, t, e in EXPANSION_CASES])
def test_expand_with_two_contexts(text: str, expected: str) -> None:
    first = {"VAR_A": "A", "VAR_EMPTY": ""}
    second = {"VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)"}
    assert expand(text, mapping_for(first, second)) == expected


# --- a container's environment (makeEnvironmentVariables) -----------------------------------


def _container(*env: tuple[str, str], command: list[str] | None = None, args: list[str] | None = None):
    container = pod_pb2.Container(name="c", image="i", command=command or [], args=args or [])
    for name, value in env:
        container.env.add(name=name, value=value)
    return container


@pytest.mark.parametrize(("env", "service_env", "expected"), [
    pytest.param(
        [("FOO", "bar"), ("ZOO", "$(FOO)-1"), ("BLU", "$(ZOO)-2")], {},
        {"FOO": "bar", "ZOO": "bar-1", "BLU": "bar-1-2"},
        id="chained-references-to-earlier-entries",
    ),
    pytest.param(
        [("FIRST", "$(LATER)"), ("LATER", "x")], {},
        {"FIRST": "$(LATER)", "LATER": "x"},
        id="a-later-entry-is-not-seen",
    ),
    pytest.param(
        [("URL", "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/")],
        {"WEB_SERVICE_HOST": "10.0.0.2", "WEB_SERVICE_PORT": "80"},
        {"URL": "http://10.0.0.2:80/", "WEB_SERVICE_HOST": "10.0.0.2", "WEB_SERVICE_PORT": "80"},
        id="references-to-service-variables",
    ),
    pytest.param(
        [("WEB_SERVICE_HOST", "override"), ("SEEN", "$(WEB_SERVICE_HOST)")],
        {"WEB_SERVICE_HOST": "10.0.0.2"},
        {"WEB_SERVICE_HOST": "override", "SEEN": "override"},
        id="env-overrides-a-service-variable",
    ),
    pytest.param(
        [("A", "1"), ("A", "2"), ("B", "$(A)")], {},
        {"A": "2", "B": "2"},
        id="a-repeated-name-keeps-its-last-value",
    ),
    pytest.param(
        [("ESCAPED", "$$(WEB_SERVICE_HOST)"), ("UNKNOWN", "$(NOPE)")], {"WEB_SERVICE_HOST": "10.0.0.2"},
        {"ESCAPED": "$(WEB_SERVICE_HOST)", "UNKNOWN": "$(NOPE)", "WEB_SERVICE_HOST": "10.0.0.2"},
        id="escapes-and-unknown-names",
    ),
])
def test_container_environment(env, service_env, expected) -> None:
    assert container_environment(_container(*env), service_env) == expected


def test_declared_variables_come_before_service_variables() -> None:
    environment = container_environment(_container(("Z", "1"), ("A", "2")), {"B_SERVICE_HOST": "10.0.0.3"})
    assert list(environment) == ["Z", "A", "B_SERVICE_HOST"]


def test_command_and_args_are_expanded_against_the_final_environment() -> None:
    container = _container(
        ("GREETING", "hello"), ("WEB_SERVICE_PORT", "8080"),
        command=["sh", "-c", "echo $(GREETING) $$(GREETING) $(WEB_SERVICE_HOST)"],
        args=["$(WEB_SERVICE_PORT)", "$(MISSING)", "$GREETING"],
    )
    environment = container_environment(container, {"WEB_SERVICE_HOST": "10.0.0.2", "WEB_SERVICE_PORT": "80"})
    command, args = expand_command_and_args(container, environment)
    assert command == ["sh", "-c", "echo hello $(GREETING) 10.0.0.2"]
    assert args == ["8080", "$(MISSING)", "$GREETING"]
