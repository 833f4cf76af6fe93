"""Wire schemas: WebSocket frames and REST bodies, validated by msgspec.

Shared with bench/ (the load generator encodes and decodes with these same types).
Unknown fields are ignored (clients may send more); missing or wrongly typed ones are errors.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from chatsrv.domain.errors import Invalid

# ---------------------------------------------------------------------------- WebSocket in


class Envelope(Struct):
    type: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")
    ref: str | int | None = None


class ChatMessageIn(Struct):
    conversation_id: str
    content: str
    message_type: str = "text"
    client_msg_id: str | None = None


class TypingIn(Struct):
    conversation_id: str
    is_typing: bool = True


class ReceiptIn(Struct):
    message_id: str | None = None
    conversation_id: str | None = None
    up_to_seq: int | None = None


class SyncIn(Struct):
    conversations: dict[str, int] | None = None


class PingIn(Struct):
    pass


SDP = str | dict[str, Any]


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


INBOUND: dict[str, type[Struct]] = {
    "chat_message": ChatMessageIn,
    "typing": TypingIn,
    "delivery_receipt": ReceiptIn,
    "read_receipt": ReceiptIn,
    "sync": SyncIn,
    "ping": PingIn,
    "call_offer": CallOfferIn,
    "call_answer": CallAnswerIn,
    "ice_candidate": IceCandidateIn,
    "call_reject": CallReasonIn,
    "call_end": CallReasonIn,
}

_envelope_decoder = msgspec.json.Decoder(Envelope)
_payload_decoders = {name: msgspec.json.Decoder(cls) for name, cls in INBOUND.items()}


class FrameError(Invalid):
    """A frame that cannot be handled; carries the ref when it could be read."""

    def __init__(self, message: str, *, code: str = "invalid_frame",
                 ref: str | int | None = None) -> None:
        super().__init__(message, code=code)
        self.ref = ref


def decode_frame(data: str | bytes) -> tuple[str, Any, str | int | None]:
    """(type, payload struct, ref). Raises FrameError with a readable message."""
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise FrameError(f"invalid frame: {exc}", code="invalid_frame") from None
    except msgspec.DecodeError as exc:
        raise FrameError(f"malformed JSON: {exc}", code="invalid_json") from None
    decoder = _payload_decoders.get(env.type)
    if decoder is None:
        raise FrameError(f"unknown frame type {env.type!r}", code="unknown_type", ref=env.ref)
    try:
        payload = decoder.decode(env.payload)
    except msgspec.DecodeError as exc:
        raise FrameError(f"invalid {env.type} payload: {exc}", code="invalid_payload",
                         ref=env.ref) from None
    return env.type, payload, env.ref


# ---------------------------------------------------------------------------- REST bodies


class RegisterIn(Struct):
    username: str
    email: str
    password: str
    display_name: str | None = None


class LoginIn(Struct):
    password: str
    email: str | None = None
    username: str | None = None


class RefreshIn(Struct):
    refresh_token: str


class CreateConversationIn(Struct):
    member_ids: list[str]
    type: str = "one_to_one"
    name: str | None = None
    admin_ids: list[str] = []


class MembersIn(Struct):
    member_ids: list[str]


class SendMessageIn(Struct):
    content: str
    message_type: str = "text"
    client_msg_id: str | None = None


class ReceiptBodyIn(Struct):
    up_to_seq: int
    status: Literal["delivered", "read"] = "read"


# ---------------------------------------------------------------------------- REST out


class UserOut(Struct):
    id: str
    username: str
    display_name: str
    email: str | None = None
    status: str | None = None
    last_seen: str | None = None
    created_at: str | None = None


class AuthOut(Struct):
    token: str
    refresh_token: str
    expires_in: int
    user: UserOut
    token_type: str = "Bearer"


class MessageOut(Struct):
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    content: str
    message_type: str
    client_msg_id: str | None
    created_at: str


class MemberOut(Struct):
    user_id: str
    role: str
    delivered_seq: int
    read_seq: int
    joined_at: str
    username: str | None = None
    display_name: str | None = None
    status: str | None = None
    last_seen: str | None = None


class ConversationOut(Struct):
    id: str
    type: str
    name: str | None
    created_by: str
    created_at: str
    last_seq: int
    members: list[MemberOut]
    last_message: MessageOut | None = None
    unread: int | None = None


class ConversationListOut(Struct):
    conversations: list[ConversationOut]


class MessagesOut(Struct):
    messages: list[MessageOut]
    has_more: bool


class MessageStatusOut(Struct):
    """Per-member status of one message, derived from watermarks ("seen by")."""

    message_id: str
    seq: int
    statuses: dict[str, str]


class UsersOut(Struct):
    users: list[UserOut]


class CallOut(Struct):
    id: str
    call_id: str
    conversation_id: str | None
    caller_id: str
    callee_id: str
    media: str
    status: str
    end_reason: str | None
    direction: Literal["outgoing", "incoming"]
    started_at: str
    answered_at: str | None
    ended_at: str | None
    duration_seconds: float | None


class CallsOut(Struct):
    calls: list[CallOut]


class IceServer(Struct):
    urls: list[str]
    username: str | None = None
    credential: str | None = None
    credentialType: str | None = None


class IceServersOut(Struct):
    ice_servers: list[IceServer]
    iceServers: list[IceServer]
    ttl: int


class ErrorDetail(Struct):
    code: str
    message: str


class ErrorOut(Struct):
    error: ErrorDetail


def decode_body(data: bytes, cls: type[Any]) -> Any:
    """Decode a JSON request body into `cls`. Raises Invalid with the field at fault."""
    if not data:
        raise Invalid("request body must be a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid request: {exc}", code="invalid_request") from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"malformed JSON: {exc}", code="invalid_json") from None
