"""A container's environment: service variables and `$(VAR)` expansion (pure).

As Kubernetes' kubelet builds it (pkg/kubelet/kubelet_pods.go,
makeEnvironmentVariables and getServiceEnvVarMap; pkg/kubelet/envvars):

1. The service variables (`service_environment`, Kubernetes' FromServices) of
   the services the pod may see (`services_for_pod`): those with a cluster IP
   in the pod's namespace when `enableServiceLinks` is true (the default), and
   always the master service (`kubernetes` in `default`) — even with
   `enableServiceLinks: false`, which drops every other service's variables,
   `_SERVICE_HOST/PORT` included.
2. The container's own `env`, in order; each value has its `$(VAR)` references
   expanded against the entries declared before it, then the service
   variables. A declared name overrides a service variable of the same name.
3. `command` and `args` are expanded against the result.

Expansion is Kubernetes' third_party/forked/golang/expansion: `$(VAR)` is
replaced, `$$` is a literal `$` (so `$$(VAR)` gives `$(VAR)`), and a reference
to an unknown name, or one never closed, is left as written.

The variables are computed when a container is created, never hashed into its
spec: a service made later does not restart running containers, and the next
container started sees it (Kubernetes' rule too).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from kybernetes.v1 import pod_pb2, service_pb2

# The master service: its variables are in every pod, whatever enableServiceLinks says.
MASTER_SERVICE_NAMESPACE = "default"
MASTER_SERVICES = frozenset({"kubernetes"})
# spec.clusterIP of a headless service.
CLUSTER_IP_NONE = "None"

_OPERATOR = "$"
_OPENER = "("
_CLOSER = ")"


def is_service_ip_set(service: service_pb2.Service) -> bool:
    """A cluster IP that variables can name: not empty, not headless ("None")."""
    return service.spec.cluster_ip not in ("", CLUSTER_IP_NONE)


def env_variable_name(name: str) -> str:
    """A service or port name as a variable name: `my-svc` -> `MY_SVC`."""
    return name.replace("-", "_").upper()


def _link_variables(service: service_pb2.Service) -> dict[str, str]:
    """Docker links' variables: `<NAME>_PORT` for the first port, `<NAME>_PORT_<port>_<PROTO>[...]` for each."""
    prefix = env_variable_name(service.metadata.name)
    ip = service.spec.cluster_ip
    result: dict[str, str] = {}
    for i, port in enumerate(service.spec.ports):
        protocol = port.protocol or "TCP"
        url = f"{protocol.lower()}://{ip}:{port.port}"
        if i == 0:
            # Docker special-cases the first port.
            result[f"{prefix}_PORT"] = url
        port_prefix = f"{prefix}_PORT_{port.port}_{protocol.upper()}"
        result[port_prefix] = url
        result[f"{port_prefix}_PROTO"] = protocol.lower()
        result[f"{port_prefix}_PORT"] = str(port.port)
        result[f"{port_prefix}_ADDR"] = ip
    return result


def service_environment(services: Iterable[service_pb2.Service]) -> dict[str, str]:
    """The variables that tell a container where the services are (Kubernetes'
    FromServices): per service with a cluster IP, `<NAME>_SERVICE_HOST`,
    `<NAME>_SERVICE_PORT` (the first port), `<NAME>_SERVICE_PORT_<PORTNAME>` per
    named port, and the Docker link variables. Headless services and services
    without a cluster IP yet get none."""
    result: dict[str, str] = {}
    for service in services:
        if not is_service_ip_set(service):
            continue
        name = env_variable_name(service.metadata.name)
        result[f"{name}_SERVICE_HOST"] = service.spec.cluster_ip
        ports = service.spec.ports
        if ports:  # validation requires one; Kubernetes assumes it
            result[f"{name}_SERVICE_PORT"] = str(ports[0].port)
        # Every named port (only the first may be unnamed).
        for port in ports:
            if port.name:
                result[f"{name}_SERVICE_PORT_{env_variable_name(port.name)}"] = str(port.port)
        result.update(_link_variables(service))
    return result


def enable_service_links(pod: pod_pb2.Pod) -> bool:
    """spec.enableServiceLinks; unset is Kubernetes' default, true."""
    return pod.spec.enable_service_links if pod.spec.HasField("enable_service_links") else True


def services_for_pod(
    services: Iterable[service_pb2.Service], namespace: str, enable_links: bool
) -> list[service_pb2.Service]:
    """The services whose variables a pod in `namespace` gets (Kubernetes'
    getServiceEnvVarMap): the master services always; the others of the pod's
    namespace when service links are enabled. A service of the pod's own
    namespace named like a master service wins over the master one."""
    chosen: dict[str, service_pb2.Service] = {}
    for service in services:
        if not is_service_ip_set(service):
            continue
        name = service.metadata.name
        if service.metadata.namespace == MASTER_SERVICE_NAMESPACE and name in MASTER_SERVICES:
            chosen.setdefault(name, service)
        elif service.metadata.namespace == namespace and enable_links:
            chosen[name] = service
    # Kubernetes walks a map (random order); by name, so that colliding variable names resolve the same way always.
    return [chosen[name] for name in sorted(chosen)]


def pod_service_environment(services: Iterable[service_pb2.Service], pod: pod_pb2.Pod) -> dict[str, str]:
    """The service variables of one pod: `service_environment` of `services_for_pod`."""
    return service_environment(services_for_pod(services, pod.metadata.namespace, enable_service_links(pod)))


# --- expansion --------------------------------------------------------------------------------


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    """A name's value from the first context that has it; else the reference as written."""

    def mapping(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return f"{_OPERATOR}{_OPENER}{name}{_CLOSER}"

    return mapping


def _read_variable_name(text: str) -> tuple[str, bool, int]:
    """What follows an operator: (the text read, whether it names a variable, how many characters it took)."""
    first = text[0]
    if first == _OPERATOR:
        return _OPERATOR, False, 1  # escaped operator
    if first == _OPENER:
        closer = text.find(_CLOSER, 1)
        if closer != -1:
            return text[1:closer], True, closer + 1
        return _OPERATOR + _OPENER, False, 1  # incomplete reference: kept
    return _OPERATOR + first, False, 1  # an operator that opens nothing


def expand(text: str, mapping: Mapping[str, str] | Callable[[str], str]) -> str:
    """`text` with its `$(VAR)` references replaced (Kubernetes' expansion.Expand)."""
    lookup = mapping_for(mapping) if isinstance(mapping, Mapping) else mapping
    if _OPERATOR not in text:
        return text
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == _OPERATOR and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_variable, advance = _read_variable_name(text[cursor + 1:])
            out.append(lookup(read) if is_variable else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def container_environment(container: pod_pb2.Container, service_env: Mapping[str, str]) -> dict[str, str]:
    """The container's whole environment, as Kubernetes' makeEnvironmentVariables:
    its `env` (names in the order first declared, a repeated name's last value),
    each value expanded against the entries before it and then the service
    variables; then the service variables it does not declare itself."""
    declared: dict[str, str] = {}
    lookup = mapping_for(declared, service_env)
    for env in container.env:
        declared[env.name] = expand(env.value, lookup)
    result = dict(declared)
    for name, value in service_env.items():
        result.setdefault(name, value)
    return result


def expand_command_and_args(
    container: pod_pb2.Container, environment: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """`command` and `args` with `$(VAR)` expanded against the container's
    environment (Kubernetes' ExpandContainerCommandAndArgs)."""
    lookup = mapping_for(environment)
    return [expand(part, lookup) for part in container.command], [expand(part, lookup) for part in container.args]
