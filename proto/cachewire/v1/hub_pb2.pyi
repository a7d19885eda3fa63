from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResetReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESET_REASON_UNSPECIFIED: _ClassVar[ResetReason]
    RESET_REASON_HISTORY_EXPIRED: _ClassVar[ResetReason]
    RESET_REASON_EPOCH_CHANGED: _ClassVar[ResetReason]
    RESET_REASON_UNKNOWN_ID: _ClassVar[ResetReason]
    RESET_REASON_SLOW_CONSUMER: _ClassVar[ResetReason]
RESET_REASON_UNSPECIFIED: ResetReason
RESET_REASON_HISTORY_EXPIRED: ResetReason
RESET_REASON_EPOCH_CHANGED: ResetReason
RESET_REASON_UNKNOWN_ID: ResetReason
RESET_REASON_SLOW_CONSUMER: ResetReason

class EventInput(_message.Message):
    __slots__ = ("type", "data", "keys", "prefixes", "flush", "traceparent", "tracestate")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    type: str
    data: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    flush: bool
    traceparent: str
    tracestate: str
    def __init__(self, type: _Optional[str] = ..., data: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., prefixes: _Optional[_Iterable[str]] = ..., flush: _Optional[bool] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("events", "idempotency_key")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[EventInput]
    idempotency_key: str
    def __init__(self, events: _Optional[_Iterable[_Union[EventInput, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "type", "data", "keys", "prefixes", "flush", "published_at_unix_micros", "traceparent", "tracestate")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_UNIX_MICROS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    data: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    prefixes: _containers.RepeatedScalarFieldContainer[str]
    flush: bool
    published_at_unix_micros: int
    traceparent: str
    tracestate: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., data: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., prefixes: _Optional[_Iterable[str]] = ..., flush: _Optional[bool] = ..., published_at_unix_micros: _Optional[int] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "resume_from")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    resume_from: str
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., resume_from: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("high_water_id", "sent_at_unix_micros")
    HIGH_WATER_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MICROS_FIELD_NUMBER: _ClassVar[int]
    high_water_id: str
    sent_at_unix_micros: int
    def __init__(self, high_water_id: _Optional[str] = ..., sent_at_unix_micros: _Optional[int] = ...) -> None: ...

class Reset(_message.Message):
    __slots__ = ("reason", "detail", "resume_from")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    reason: ResetReason
    detail: str
    resume_from: str
    def __init__(self, reason: _Optional[_Union[ResetReason, str]] = ..., detail: _Optional[str] = ..., resume_from: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("events", "heartbeat", "reset")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    events: EventBatch
    heartbeat: Heartbeat
    reset: Reset
    def __init__(self, events: _Optional[_Union[EventBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ...) -> None: ...
