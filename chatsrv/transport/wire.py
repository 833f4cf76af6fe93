"""Wire schemas: WebSocket frames and REST bodies, validated by msgspec.

Shared with bench/ (the load generator encodes and decodes with these same types).
Unknown fields are ignored (clients may send more); missing or wrongly typed ones are errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from chatsrv.domain.errors import Invalid

INT64_MAX = 2**63 - 1
# Sequence numbers and counters as both databases store them (bigint): larger values are
# refused here, with the field, instead of overflowing in the driver.
Seq = Annotated[int, Meta(ge=0, le=INT64_MAX)]

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
    up_to_seq: Seq | None = None


class SyncIn(Struct):
    conversations: dict[str, Seq] | None = None


class PingIn(Struct):
    pass


class AuthIn(Struct):
    token: str


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
    "auth": AuthIn,
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


def _bad_text(value: str) -> bool:
    """NUL, or a lone surrogate (not encodable as UTF-8): PostgreSQL refuses the first,
    no encoder takes the second; SQLite would store both. Refused on every backend."""
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, path: str = "") -> None:
    """Raise Invalid (with the field's path) for text no database can store, anywhere in a
    decoded body: struct fields, dict keys and values, list items."""
    if isinstance(value, str):
        if _bad_text(value):
            raise Invalid(f"{path or 'value'} must not contain NUL characters or unpaired "
                          "surrogates", field=path or None)
    elif isinstance(value, Struct):
        for name in value.__struct_fields__:
            check_text(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, path)
            check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(item, path)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _may_hold_bad_text(data: str | bytes) -> bool:
    # In valid JSON, NUL and surrogates can only arrive as \u escapes (raw control
    # characters and invalid UTF-8 are refused by the decoder): skip the walk otherwise.
    return ("\\u" in data) if isinstance(data, str) else (b"\\u" in data)


# What msgspec raises for input it cannot take: malformed JSON, invalid UTF-8, or nesting
# deeper than the C stack allows (RecursionError at ~3,000-5,000 levels).
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_frame(data: str | bytes) -> tuple[str, Any, str | int | None]:
    """(type, payload struct, ref). Raises FrameError with a readable message."""
    if isinstance(data, bytes) and not _utf8(data):  # text frames wsproto checked already
        raise FrameError("malformed JSON: not valid UTF-8", code="invalid_json")
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise FrameError(f"invalid frame: {exc}", code="invalid_frame") from None
    except _UNDECODABLE as exc:
        raise FrameError(f"malformed JSON: {_reason(exc)}", code="invalid_json") from None
    decoder = _payload_decoders.get(env.type)
    if decoder is None:
        raise FrameError(f"unknown frame type {env.type[:64]!r}", code="unknown_type",
                         ref=env.ref)
    try:
        payload = decoder.decode(env.payload)
        if _may_hold_bad_text(data):
            check_text(payload)
    except _UNDECODABLE as exc:
        raise FrameError(f"invalid {env.type} payload: {_reason(exc)}", code="invalid_payload",
                         ref=env.ref) from None
    except Invalid as exc:
        error = FrameError(exc.message, code="invalid_request", ref=env.ref)
        error.details = exc.details
        raise error from None
    return env.type, payload, env.ref


_since_decoder = msgspec.json.Decoder(dict[str, Seq])


def decode_since(text: str) -> dict[str, int]:
    """`?since=` of the WebSocket URL: a JSON object of conversation id -> last seq seen."""
    try:
        positions = _since_decoder.decode(text)
    except (msgspec.ValidationError, *_UNDECODABLE):
        raise Invalid("since must be a JSON object of conversation_id -> last seq",
                      code="invalid_since", field="since") from None
    if _may_hold_bad_text(text):
        check_text(positions, "since")
    return positions


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    return str(exc)


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


class LogoutIn(Struct):
    """Either the session's refresh token, or nothing (the bearer token's session ends)."""

    refresh_token: str | None = None


class PasswordIn(Struct):
    old_password: str
    new_password: str


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
    up_to_seq: Seq
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


class AdminUserOut(Struct):
    id: str
    username: str
    display_name: str
    email: str
    is_admin: bool
    active: bool
    created_at: str
    last_seen: str | None = None
    deactivated_at: str | None = None


class AdminUsersOut(Struct):
    users: list[AdminUserOut]


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
    if not _utf8(data):  # msgspec checks only the strings it decodes, not skipped fields
        raise Invalid("malformed JSON: not valid UTF-8", code="invalid_json")
    try:
        body = msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid request: {exc}", code="invalid_request",
                      field=_field_of(exc)) from None
    except _UNDECODABLE as exc:
        raise Invalid(f"malformed JSON: {_reason(exc)}", code="invalid_json") from None
    if _may_hold_bad_text(data):
        check_text(body)
    return body


def _field_of(exc: msgspec.ValidationError) -> str | None:
    """`$.member_ids[0]` in msgspec's message -> "member_ids"."""
    text = str(exc)
    marker = "at `$."
    if marker not in text:
        return None
    path = text.split(marker, 1)[1].split("`", 1)[0]
    return path.split("[", 1)[0].split(".", 1)[0] or None
