"""REST request and response bodies. The OpenAPI document is built from these types
(transport/http/api.py); every handler returns one of them."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from chatsrv.domain.errors import Invalid
from chatsrv.protocol.frames import MessagePayload
from chatsrv.protocol.text import UNDECODABLE, Seq, check_text, may_hold_bad_text, reason, utf8

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
    reply_to: str | None = None  # a message of the same conversation (issue 14)
    attachments: list[str] = []  # upload ids, the sender's own


class EditMessageIn(Struct):
    content: str


class ProfileIn(Struct):
    """PATCH /api/users/me: the fields given change."""

    display_name: str | None = None
    presence_visible: bool | None = None
    read_receipts_visible: bool | None = None


class RenameConversationIn(Struct):
    name: str


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
    # my own settings (GET/PATCH /api/users/me only)
    presence_visible: bool | None = None
    read_receipts_visible: bool | None = None


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


MessageOut = MessagePayload  # a message is rendered one way, everywhere


class UploadOut(Struct):
    """POST /api/uploads: the stored upload. `url` and `thumbnail_url` are signed."""

    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    url: str
    thumbnail_url: str | None
    width: int | None
    height: int | None
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
    unread: int = 0  # the caller's: last_seq - their read_seq


class ConversationListOut(Struct):
    conversations: list[ConversationOut]


class MessagesOut(Struct, omit_defaults=True):
    messages: list[MessageOut]
    has_more: bool
    # senders in this page whom the caller blocked (the client collapses their messages);
    # left out when there are none, so a page keeps the seed's exact shape
    blocked_senders: list[str] = []


class MessageStatusOut(Struct):
    """Per-member status of one message, derived from watermarks ("seen by")."""

    message_id: str
    seq: int
    statuses: dict[str, str]


class BlockOut(Struct):
    user: UserOut
    created_at: str


class BlocksOut(Struct):
    blocks: list[BlockOut]


class UsersOut(Struct):
    users: list[UserOut]


class SearchResultOut(Struct):
    message: MessageOut
    snippet: str  # HTML: the content escaped, hits in <mark>…</mark>, "…" where cut


class SearchOut(Struct):
    """Newest first. `next_before`: pass as `before` for the next page (null: no more)."""

    results: list[SearchResultOut]
    has_more: bool
    next_before: str | None = None


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
    field: str | None = None
    retry_after: float | None = None
    user_ids: list[str] | None = None  # unknown_user: the ids that do not exist


class ErrorBody(Struct):
    error: ErrorDetail


def decode_body(data: bytes, cls: type[Any]) -> Any:
    """Decode a JSON request body into `cls`. Raises Invalid with the field at fault."""
    if not data:
        raise Invalid("request body must be a JSON object", code="invalid_json")
    if not utf8(data):  # msgspec checks only the strings it decodes, not skipped fields
        raise Invalid("malformed JSON: not valid UTF-8", code="invalid_json")
    try:
        body = msgspec.json.decode(data, type=cls)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid request: {exc}", code="invalid_request",
                      field=_field_of(exc)) from None
    except UNDECODABLE as exc:
        raise Invalid(f"malformed JSON: {reason(exc)}", code="invalid_json") from None
    if may_hold_bad_text(data):
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


_since_decoder = msgspec.json.Decoder(dict[str, Seq])


def decode_since(text: str) -> dict[str, int]:
    """`?since=` of the WebSocket URL: a JSON object of conversation id -> last seq seen."""
    try:
        positions = _since_decoder.decode(text)
    except (msgspec.ValidationError, *UNDECODABLE):
        raise Invalid("since must be a JSON object of conversation_id -> last seq",
                      code="invalid_since", field="since") from None
    if may_hold_bad_text(text):
        check_text(positions, "since")
    return positions
