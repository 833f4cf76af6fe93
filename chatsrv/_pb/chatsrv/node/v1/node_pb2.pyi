from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("user_ids", "type", "text", "droppable", "connection_id", "exclude_connection_id", "signal")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DROPPABLE_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    type: str
    text: str
    droppable: bool
    connection_id: str
    exclude_connection_id: str
    signal: CallSignal
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., type: _Optional[str] = ..., text: _Optional[str] = ..., droppable: _Optional[bool] = ..., connection_id: _Optional[str] = ..., exclude_connection_id: _Optional[str] = ..., signal: _Optional[_Union[CallSignal, _Mapping]] = ...) -> None: ...

class CallSignal(_message.Message):
    __slots__ = ("call_id", "action", "user_id", "connection_id", "node", "payload_json", "ref_json")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    REF_JSON_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    action: str
    user_id: str
    connection_id: str
    node: str
    payload_json: str
    ref_json: str
    def __init__(self, call_id: _Optional[str] = ..., action: _Optional[str] = ..., user_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., node: _Optional[str] = ..., payload_json: _Optional[str] = ..., ref_json: _Optional[str] = ...) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("from_instance", "events")
    FROM_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    from_instance: str
    events: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, from_instance: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class DeliverReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
