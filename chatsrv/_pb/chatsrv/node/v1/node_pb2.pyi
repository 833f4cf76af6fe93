from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("user_ids", "type", "text", "droppable")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DROPPABLE_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    type: str
    text: str
    droppable: bool
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ..., type: _Optional[str] = ..., text: _Optional[str] = ..., droppable: _Optional[bool] = ...) -> None: ...

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
