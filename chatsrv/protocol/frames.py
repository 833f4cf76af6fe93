"""WebSocket frames, as types.

Inbound: every client frame is one struct tagged by `type` (`{"type", "payload", "ref"}`),
and `InboundFrame` is their union: one decode picks the type and checks the payload. Unknown
fields are ignored (clients may send more); a missing or mistyped field is an error frame.

Outbound: one payload struct per server frame type (`TYPE` names it), wrapped in a `Frame`
that is encoded once however many sockets it goes to. docs/protocol.md lists exactly these
types (checked by tests/unit/test_protocol.py).
"""

from __future__ import annotations

import typing
from functools import cached_property
from typing import Any, ClassVar, Literal

import msgspec
from msgspec import Struct, field

from chatsrv.domain.errors import Invalid
from chatsrv.protocol.text import (
    UNDECODABLE,
    Seq,
    check_text,
    may_hold_bad_text,
    reason,
    utf8,
)

Ref = str | int | None
SDP = str | dict[str, Any]

# ============================================================================ inbound


class ChatMessageIn(Struct):
    conversation_id: str
    content: str
    message_type: str = "text"
    client_msg_id: str | None = None
    reply_to: str | None = None  # a message of the same conversation (issue 14)
    attachments: list[str] = []  # upload ids (POST /api/uploads), the sender's own


class TypingIn(Struct):
    conversation_id: str
    is_typing: bool = True


class ReceiptIn(Struct):
    message_id: str | None = None
    conversation_id: str | None = None
    up_to_seq: Seq | None = None


class SyncIn(Struct):
    conversations: dict[str, Seq] | None = None
    changes_since: str | None = None  # a changes_cursor (issue 14)


# message changes (issue 14)
class EditMessageIn(Struct):
    message_id: str
    content: str


class DeleteMessageIn(Struct):
    message_id: str


class ReactionIn(Struct):
    message_id: str
    emoji: str
    add: bool = True


class Empty(Struct, frozen=True):
    pass


class AuthIn(Struct):
    token: str


class CallOfferIn(Struct):
    offer: SDP
    call_id: str | None = None
    recipient_id: str | None = None
    conversation_id: str | None = None
    media: Literal["audio", "video"] = "audio"


class CallAnswerIn(Struct):
    call_id: str
    answer: SDP


class IceCandidateIn(Struct):
    call_id: str
    candidate: dict[str, Any] | str | None = None


class CallReasonIn(Struct):
    call_id: str
    reason: str | None = None


class _In(Struct, tag_field="type", kw_only=True):
    ref: Ref = None


class ChatMessage(_In, tag="chat_message"):
    payload: ChatMessageIn


class Typing(_In, tag="typing"):
    payload: TypingIn


class DeliveryReceipt(_In, tag="delivery_receipt"):
    payload: ReceiptIn = field(default_factory=ReceiptIn)


class ReadReceipt(_In, tag="read_receipt"):
    payload: ReceiptIn = field(default_factory=ReceiptIn)


class Sync(_In, tag="sync"):
    payload: SyncIn = field(default_factory=SyncIn)


class Ping(_In, tag="ping"):
    payload: Empty = field(default_factory=Empty)


class Auth(_In, tag="auth"):
    payload: AuthIn


class CallOffer(_In, tag="call_offer"):
    payload: CallOfferIn


class CallAnswer(_In, tag="call_answer"):
    payload: CallAnswerIn


class IceCandidate(_In, tag="ice_candidate"):
    payload: IceCandidateIn


class CallReject(_In, tag="call_reject"):
    payload: CallReasonIn


class CallEnd(_In, tag="call_end"):
    payload: CallReasonIn


class EditMessage(_In, tag="edit_message"):
    payload: EditMessageIn


class DeleteMessage(_In, tag="delete_message"):
    payload: DeleteMessageIn


class Reaction(_In, tag="reaction"):
    payload: ReactionIn


InboundFrame = (ChatMessage | Typing | DeliveryReceipt | ReadReceipt | Sync | Ping | Auth
                | CallOffer | CallAnswer | IceCandidate | CallReject | CallEnd
                | EditMessage | DeleteMessage | Reaction)
INBOUND: dict[str, type[_In]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (ChatMessage, Typing, DeliveryReceipt, ReadReceipt, Sync, Ping, Auth,
                CallOffer, CallAnswer, IceCandidate, CallReject, CallEnd,
                EditMessage, DeleteMessage, Reaction)
}


# frame type -> its payload struct
PAYLOADS: dict[str, type[Struct]] = {
    tag: typing.get_type_hints(cls)["payload"] for tag, cls in INBOUND.items()
}


class Envelope(Struct):
    """Just the envelope, for telling why a frame was refused (and its ref)."""

    type: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")
    ref: Ref = None


class FrameError(Invalid):
    """A frame that cannot be handled; carries the ref when it could be read."""

    def __init__(self, message: str, *, code: str = "invalid_frame", ref: Ref = None) -> None:
        super().__init__(message, code=code)
        self.ref = ref


_inbound = msgspec.json.Decoder(InboundFrame)
_envelope = msgspec.json.Decoder(Envelope)


def decode_frame(data: str | bytes) -> InboundFrame:
    """The frame, its payload checked. Raises FrameError: invalid_json, invalid_frame,
    unknown_type, invalid_payload, or invalid_request (a value no backend stores) with the
    field and the frame's ref where it could be read."""
    if isinstance(data, bytes) and not utf8(data):  # text frames wsproto checked already
        raise FrameError("malformed JSON: not valid UTF-8", code="invalid_json")
    try:
        frame = _inbound.decode(data)
    except msgspec.ValidationError as exc:
        raise _refusal(data, exc) from None
    except UNDECODABLE as exc:
        raise FrameError(f"malformed JSON: {reason(exc)}", code="invalid_json") from None
    if may_hold_bad_text(data):
        try:
            check_text(frame.payload)
        except Invalid as exc:
            error = FrameError(exc.message, code="invalid_request", ref=frame.ref)
            error.details = exc.details
            raise error from None
    return frame


def _refusal(data: str | bytes, exc: msgspec.ValidationError) -> FrameError:
    """Why the union refused a frame, with the ref if the envelope is readable."""
    try:
        env = _envelope.decode(data)
    except msgspec.ValidationError as bad:
        return FrameError(f"invalid frame: {bad}", code="invalid_frame")
    except UNDECODABLE as bad:
        return FrameError(f"malformed JSON: {reason(bad)}", code="invalid_json")
    if env.type not in INBOUND:
        return FrameError(f"unknown frame type {env.type[:64]!r}", code="unknown_type",
                          ref=env.ref)
    return FrameError(f"invalid {env.type} payload: {exc}", code="invalid_payload",
                      ref=env.ref)


# ============================================================================ outbound


class Out(Struct):
    """A server frame's payload; `TYPE` is the frame's type."""

    TYPE: ClassVar[str]
    DROPPABLE: ClassVar[bool] = False  # first to go when a socket's outbox is full


class ConversationPosition(Struct):
    last_seq: int
    unread: int
    delivered_seq: int
    read_seq: int
    mentions_unread: int = 0  # messages above read_seq that mention you (issue 14)


class Ready(Out):
    TYPE = "ready"
    user_id: str
    session_id: str  # this connection
    server_time: str
    node_id: str
    heartbeat_interval: float
    token_expires_at: int
    conversations: dict[str, ConversationPosition]
    changes_cursor: str = ""  # for sync {changes_since} (issue 14)
    # users this user blocked: their messages in groups are for the client to collapse
    blocked: list[str] = []


class ReactionCount(Struct):
    count: int
    me: bool


class AttachmentOut(Struct):
    """An upload a message carries; `url`/`thumbnail_url` are signed (they work in an
    <img src> without a bearer header) for DOWNLOAD_URL_TTL."""

    id: str
    name: str
    content_type: str
    size: int
    url: str
    thumbnail_url: str | None
    width: int | None
    height: int | None


class MessagePayload(Out):
    """A message as every client sees it: new_message, history, sync_result, REST."""

    TYPE = "new_message"
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    content: str
    message_type: str
    client_msg_id: str | None
    created_at: str
    # its current state (issue 14)
    edited_at: str | None = None
    deleted: bool = False
    reply_to: str | None = None
    mentions: list[str] = field(default_factory=list)
    reactions: dict[str, ReactionCount] = field(default_factory=dict)
    attachments: list[AttachmentOut] = field(default_factory=list)


class MessageAck(Out):
    TYPE = "message_ack"
    id: str
    message_id: str
    conversation_id: str
    seq: int
    client_msg_id: str | None
    created_at: str
    duplicate: bool


class MessageStatus(Out):
    TYPE = "message_status"
    conversation_id: str
    message_id: str | None
    user_id: str
    status: Literal["delivered", "read"]
    up_to_seq: int
    timestamp: int  # Unix seconds, as presence_update's (it was fractional before)
    timestamp_ms: int  # the same instant in Unix milliseconds


class TypingOut(Out):
    TYPE = "typing"
    DROPPABLE = True
    conversation_id: str
    user_id: str
    is_typing: bool


class PresenceUpdate(Out):
    TYPE = "presence_update"
    user_id: str
    status: Literal["online", "offline"]
    timestamp: int  # Unix seconds (the seed's)
    last_seen: str | None
    timestamp_ms: int  # the same instant in Unix milliseconds


class MemberMarks(Struct):
    delivered_seq: int
    read_seq: int


class ChangeOut(Struct):
    """One logged change: a message_edited, message_deleted or reaction_update frame."""

    type: str
    payload: dict[str, Any]


class SyncResult(Out, omit_defaults=True):
    TYPE = "sync_result"
    messages: list[MessagePayload]
    has_more: bool
    watermarks: dict[str, dict[str, MemberMarks]]
    # with changes_since only (issue 14)
    changes: list[ChangeOut] | None = None
    changes_cursor: str | None = None
    changes_has_more: bool | None = None


class MessageEdited(Out):
    TYPE = "message_edited"
    message_id: str
    conversation_id: str
    seq: int
    content: str
    edited_at: str | None
    mentions: list[str]


class MessageDeleted(Out):
    TYPE = "message_deleted"
    message_id: str
    conversation_id: str
    seq: int
    deleted_at: str | None
    deleted_by: str | None


class ReactionUpdate(Out):
    TYPE = "reaction_update"
    message_id: str
    conversation_id: str
    seq: int
    user_id: str
    emoji: str
    add: bool
    counts: dict[str, int]


class MembersAdded(Out):
    TYPE = "members_added"
    conversation_id: str
    user_ids: list[str]
    by: str


class MemberRemoved(Out):
    TYPE = "member_removed"
    conversation_id: str
    user_id: str
    by: str


class MemberRoleChanged(Out):
    TYPE = "member_role_changed"
    conversation_id: str
    user_id: str
    role: str


class ConversationUpdated(Out):
    TYPE = "conversation_updated"
    conversation_id: str
    name: str | None
    by: str


class BlockUpdate(Out):
    """To the blocker's own devices: whom they blocked or unblocked (`ready.blocked` then
    changes the same way)."""

    TYPE = "block_update"
    user_id: str
    blocked: bool


class Pong(Out):
    TYPE = "pong"
    server_time: str


class AuthOk(Out):
    TYPE = "auth_ok"
    expires_at: int
    user_id: str


class ErrorOut(Out, omit_defaults=True):
    TYPE = "error"
    code: str
    message: str
    ref: Ref
    field: str | None = None
    retry_after: float | None = None
    user_ids: list[str] | None = None


class CallOfferOut(Out):
    TYPE = "call_offer"
    call_id: str
    caller_id: str
    conversation_id: str | None
    media: str
    offer: SDP


class CallRinging(Out):
    TYPE = "call_ringing"
    call_id: str
    callee_id: str
    devices: int


class CallAnswerOut(Out):
    TYPE = "call_answer"
    call_id: str
    answer: SDP
    callee_id: str


class CallAnsweredElsewhere(Out):
    TYPE = "call_answered_elsewhere"
    call_id: str


class IceCandidateOut(Out):
    TYPE = "ice_candidate"
    call_id: str
    candidate: dict[str, Any] | str | None
    # Python keyword: the wire name is "from"
    sender: str = field(name="from")


class CallOver(Out):
    """call_end (or call_reject, see CallRejectOut): the call is over, and why."""

    TYPE = "call_end"
    call_id: str
    reason: str | None
    status: str
    kept_call_id: str | None = None


class CallRejectOut(CallOver):
    TYPE = "call_reject"


OUTBOUND: dict[str, type[Out]] = {
    cls.TYPE: cls for cls in (
        Ready, MessagePayload, MessageAck, MessageStatus, TypingOut, PresenceUpdate,
        SyncResult, MembersAdded, MemberRemoved, MemberRoleChanged, Pong, AuthOk, ErrorOut,
        CallOfferOut, CallRinging, CallAnswerOut, CallAnsweredElsewhere, IceCandidateOut,
        CallOver, CallRejectOut, MessageEdited, MessageDeleted, ReactionUpdate,
        ConversationUpdated, BlockUpdate)
}

_encoder = msgspec.json.Encoder()


class Frame:
    """A server -> client frame `{"type", "payload", "ref"?}`, encoded once (`text`,
    `data`) however many connections receive it.

    `droppable` frames (typing) are the first to go when a connection's outbox is full;
    anything else that does not fit evicts the connection (it will resync).
    """

    __slots__ = ("__dict__", "droppable", "payload", "ref", "type")

    def __init__(self, payload: Out | None, *, ref: Ref = None, type: str | None = None,
                 droppable: bool | None = None) -> None:
        self.payload = payload
        self.type = type or (payload.TYPE if payload is not None else "")
        self.droppable = (payload.DROPPABLE if payload is not None else False) \
            if droppable is None else droppable
        self.ref = ref

    @classmethod
    def from_text(cls, type: str, text: str, *, droppable: bool = False) -> Frame:
        """A frame encoded elsewhere (another node): `.text` is `text`, sent as is. Its
        payload is not decoded (None): such frames only go out to connections."""
        frame = cls(None, type=type, droppable=droppable)
        frame.__dict__["text"] = text  # fills the cached_property
        return frame

    @cached_property
    def text(self) -> str:
        out: dict[str, Any] = {"type": self.type, "payload": self.payload}
        if self.ref is not None:
            out["ref"] = self.ref
        return _encoder.encode(out).decode()

    def __repr__(self) -> str:
        return f"Frame({self.type!r}, {self.payload!r})"
