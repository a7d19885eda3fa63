from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("Events", "forceClose")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FORCECLOSE_FIELD_NUMBER: _ClassVar[int]
    Events: _containers.RepeatedCompositeFieldContainer[EventType]
    forceClose: bool
    def __init__(self, Events: _Optional[_Iterable[_Union[EventType, _Mapping]]] = ..., forceClose: _Optional[bool] = ...) -> None: ...

class EventType(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("eventType", "data")
    EVENTTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    eventType: EventType
    data: str
    def __init__(self, eventType: _Optional[_Union[EventType, _Mapping]] = ..., data: _Optional[str] = ...) -> None: ...
