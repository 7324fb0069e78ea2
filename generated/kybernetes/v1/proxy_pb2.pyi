from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProxyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProxiedPortStatus(_message.Message):
    __slots__ = ("namespace", "service", "port_name", "protocol", "port", "listening", "error", "endpoints", "connections_total", "connections_active", "connect_failures", "bytes_in", "bytes_out")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    service: str
    port_name: str
    protocol: str
    port: int
    listening: bool
    error: str
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    connections_total: int
    connections_active: int
    connect_failures: int
    bytes_in: int
    bytes_out: int
    def __init__(self, namespace: _Optional[str] = ..., service: _Optional[str] = ..., port_name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ..., listening: _Optional[bool] = ..., error: _Optional[str] = ..., endpoints: _Optional[_Iterable[str]] = ..., connections_total: _Optional[int] = ..., connections_active: _Optional[int] = ..., connect_failures: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ...) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("node_name", "ports")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    ports: _containers.RepeatedCompositeFieldContainer[ProxiedPortStatus]
    def __init__(self, node_name: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ProxiedPortStatus, _Mapping]]] = ...) -> None: ...
