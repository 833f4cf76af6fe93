"""Ports: what the services need from the outside world. Adapters satisfy them structurally."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from chatsrv.domain.changes import Change
from chatsrv.domain.errors import NotFound
from chatsrv.domain.model import (
    Arrival,
    Block,
    CallClaim,
    CallRecord,
    CallSignal,
    Conversation,
    ConversationSummary,
    ConversationType,
    Message,
    Privacy,
    Reaction,
    RefreshOutcome,
    Role,
    SessionInfo,
    User,
    Watermarks,
)
from chatsrv.domain.search import SearchCursor, SearchQuery
from chatsrv.domain.uploads import Upload

if TYPE_CHECKING:  # frames are the protocol's; the domain only passes them on
    from chatsrv.protocol.frames import Frame


class Store(Protocol):
    """Persistence. Every method is one transaction; raises Conflict on a unique violation and
    Unavailable when the database cannot be reached."""

    # users
    async def create_user(
        self, *, user_id: str, username: str, email: str, display_name: str,
        password_hash: str, created_at: datetime,
    ) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def get_users(self, user_ids: Sequence[str]) -> list[User]: ...
    async def find_login(self, login: str) -> tuple[User, str] | None: ...
    async def search_users(self, query: str, *, limit: int) -> list[User]: ...
    async def set_last_seen(self, user_id: str, at: datetime) -> None: ...

    # sessions (services/sessions.py): a login is a session, its refresh tokens a family
    async def open_session(self, *, session_id: str, user_id: str, token_hash: str,
                           expires_at: datetime, created_at: datetime) -> None: ...
    async def add_refresh_token(
        self, *, token_hash: str, user_id: str, family_id: str, expires_at: datetime
    ) -> None: ...
    async def get_session(self, session_id: str) -> SessionInfo | None: ...
    async def use_refresh_token(self, token_hash: str, *, now: datetime) -> RefreshOutcome:
        """Consume a refresh token once (atomically: one of concurrent uses wins). A spent
        token used again revokes its whole session (`replayed`)."""
        ...
    async def revoke_by_refresh_token(self, token_hash: str, *, at: datetime,
                                      reason: str) -> str | None: ...
    async def revoke_sessions(self, session_ids: Sequence[str], *, at: datetime,
                              reason: str) -> list[str]: ...
    async def live_sessions(self, user_id: str) -> list[str]: ...
    async def revoked_sessions_since(self, since: datetime, *, after_id: str = ...,
                                     limit: int) -> list[tuple[str, datetime]]:
        """Sessions revoked after (since, after_id) in (revoked_at, id) order."""
        ...

    # administration
    async def set_password(self, user_id: str, password_hash: str) -> None: ...
    async def set_admin(self, user_id: str, admin: bool) -> None: ...
    async def set_deactivated(self, user_id: str, at: datetime | None) -> None: ...
    async def find_user(self, ident: str) -> User | None: ...
    async def list_users(self, query: str, *, limit: int) -> list[User]: ...

    # conversations
    async def create_conversation(
        self, *, conversation_id: str, type: ConversationType, name: str | None,
        created_by: str, members: Sequence[tuple[str, Role]], direct_key: str | None,
        created_at: datetime,
    ) -> tuple[Conversation, bool]:
        """Returns (conversation, created). For a direct_key that exists, the existing one."""
        ...
    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    async def rename_conversation(self, conversation_id: str, name: str) -> None: ...
    async def list_conversations(self, user_id: str) -> list[ConversationSummary]: ...
    async def member_ids(self, conversation_id: str) -> list[str]: ...
    async def add_members(
        self, conversation_id: str, members: Sequence[tuple[str, Role]], *, at: datetime
    ) -> list[str]: ...
    async def remove_member(self, conversation_id: str, user_id: str) -> tuple[bool, str | None]:
        """(was a member, the member made admin because the last admin left)."""
        ...
    async def contacts(self, user_id: str) -> list[str]:
        """Users who share at least one conversation with user_id (not user_id)."""
        ...
    async def conversation_positions(self, user_id: str) -> dict[str, tuple[int, Watermarks]]:
        """conversation id -> (last_seq, this member's watermarks), for every membership."""
        ...
    async def arrivals(self, user_ids: Sequence[str]) -> dict[str, Arrival]:
        """Positions and contacts of several connecting users at once (every id is a key)."""
        ...

    # messages
    async def append_message(
        self, *, message_id: str, conversation_id: str, sender_id: str, content: str,
        message_type: str, client_msg_id: str | None, created_at: datetime,
    ) -> tuple[Message, bool]:
        """Commit a message with the next seq. Returns (message, created); a repeated
        (sender_id, client_msg_id) returns the stored message and False."""
        ...
    async def append_messages(
        self, drafts: Sequence[Message]
    ) -> list[tuple[Message, bool] | NotFound]:
        """Group commit: several drafts in one transaction, an outcome each."""
        ...
    async def get_message(self, message_id: str) -> Message | None: ...
    async def list_messages(
        self, conversation_id: str, *, limit: int, offset: int = 0,
        before_seq: int | None = None, after_seq: int | None = None,
    ) -> list[Message]:
        """Newest first for offset/before_seq paging; oldest first for after_seq."""
        ...
    async def advance_watermarks(
        self, conversation_id: str, user_id: str, *, delivered_to: int, read_to: int
    ) -> tuple[Watermarks, Watermarks]:
        """Move forward only, never past last_seq. Returns (before, after)."""
        ...
    async def watermarks(self, conversation_id: str) -> dict[str, Watermarks]: ...
    async def watermarks_of_my_conversations(
        self, user_id: str
    ) -> dict[str, dict[str, Watermarks]]:
        """conversation id -> member -> watermarks, for every conversation of user_id."""
        ...

    async def ping(self) -> None: ...


class CallLog(Protocol):
    """Call history. Each method is one transaction."""

    async def record_call(self, call: CallRecord) -> None: ...
    async def mark_answered(self, call_id: str, at: datetime) -> None: ...
    async def finish_call(self, call_id: str, *, status: str, end_reason: str | None,
                          answered_at: datetime | None, ended_at: datetime) -> None: ...
    async def get_call(self, call_id: str) -> CallRecord | None: ...
    async def list_calls(self, user_id: str, *, before: datetime, limit: int) -> list[CallRecord]: ...

    # claims: who is in a call now, cluster-wide (services/calls.py)
    async def claim_call(self, claim: CallClaim, *,
                         replacing: str | None = None) -> list[CallClaim]:
        """Claim the caller and the callee for a call, atomically: of concurrent claims on
        a user exactly one wins. Returns [] when claimed, else the claims in the way (on
        either user), claiming nothing. `replacing`: a call id whose claims are taken over
        (glare: the winning call replaces the losing one)."""
        ...
    async def mark_claim_answered(self, call_id: str) -> None: ...
    async def release_call(self, call_id: str) -> None: ...
    async def release_owner(self, owner: str) -> list[str]:
        """Drop the claims of a node instance that is gone; the call ids released."""
        ...
    async def release_all_claims(self) -> None:
        """A single node starting: no owner of earlier claims is alive."""
        ...
    async def call_owner(self, call_id: str) -> str | None: ...


class MessageChanges(Protocol):
    """Edits, deletes and reactions (issue 14), each committed in one transaction with its
    entry in the change log (`changes_since`), whose ids are handed out in commit order."""

    async def edit_message(self, message_id: str, *, content: str, mentions: Sequence[str],
                           at: datetime) -> Message | None:
        """Set the content, mentions and edited_at of a message that is not deleted, and
        log `message_edited`. None: no such message, or it is deleted."""
        ...
    async def delete_message(self, message_id: str, *, by: str,
                             at: datetime) -> Message | None:
        """Empty the message (content "", no mentions, no reactions), mark it deleted and
        log `message_deleted`. None: no such message, or it was deleted already."""
        ...
    async def set_reaction(self, message_id: str, *, user_id: str, emoji: str, add: bool,
                           at: datetime) -> tuple[Message, dict[str, int], bool] | None:
        """Add or take back one user's emoji (idempotent). Returns (message, counts per
        emoji after, whether anything changed: then `reaction_update` is logged). None: no
        such message, or it is deleted."""
        ...
    async def reactions(self, message_ids: Sequence[str],
                        viewer: str) -> dict[str, tuple[Reaction, ...]]:
        """message id -> its reactions as `viewer` sees them (only ids that have some),
        emojis in the order they were first put on the message."""
        ...
    async def changes_since(self, user_id: str, after: int, *, limit: int) -> list[Change]:
        """The logged changes of the user's conversations with id > after, in id order."""
        ...
    async def last_change(self) -> int:
        """The id of the newest change committed (0: none yet)."""
        ...
    async def member_ids_by_username(self, conversation_id: str,
                                     usernames: Sequence[str]) -> dict[str, str]:
        """lower-cased username -> user id, for the members of the conversation among them."""
        ...
    async def mentions_unread(self, user_id: str) -> dict[str, int]:
        """conversation id -> messages above the user's read watermark that mention them
        (not deleted); only conversations that have some."""
        ...


class Blocks(Protocol):
    """Blocks between users and the users' privacy settings (services/privacy.py). Each
    method is one transaction; raises Unavailable when the database cannot be reached."""

    async def block(self, blocker_id: str, blocked_id: str, *, at: datetime) -> bool:
        """Record the block (idempotent). True if it is new; Invalid for an unknown user."""
        ...
    async def unblock(self, blocker_id: str, blocked_id: str) -> bool:
        """True if there was such a block."""
        ...
    async def list_blocks(self, blocker_id: str) -> list[Block]:
        """The users `blocker_id` blocked, newest block first."""
        ...
    async def privacy(self, user_id: str) -> Privacy:
        """Blocks either way and the settings of one user (defaults for an unknown id)."""
        ...
    async def update_profile(self, user_id: str, *, display_name: str | None = None,
                             presence_visible: bool | None = None,
                             read_receipts_visible: bool | None = None) -> User | None:
        """Change the fields given (None: unchanged); the user after, None if unknown."""
class SearchIndex(Protocol):
    """Full-text search of messages (domain/search.py: the query language). The index is
    kept by the database itself (a generated column, triggers), so an edit or a delete of
    a message is searchable as it is now, with no call here."""

    async def search_messages(
        self, user_id: str, query: SearchQuery, *, conversation_id: str | None,
        before: SearchCursor | None, limit: int,
    ) -> list[Message]:
        """Messages matching every term of `query` in the conversations `user_id` is a
        member of now (checked in the same read), narrowed to `conversation_id` if given;
        newest first ((created_at, id) descending), strictly after `before` in that order;
        at most `limit`. A deleted message (content "") never matches. Raises Unavailable."""
        ...


class Subscriber(Protocol):
    """A live client connection as the router sees it: who, and a way to queue a frame."""

    user_id: str
    connection_id: str

    def send_nowait(self, event: Frame) -> None:
        """Queue without blocking. A full outbox drops a droppable event or evicts the
        connection; never raises, never blocks."""
        ...


class Router(Protocol):
    """Delivers events to users' live connections, wherever they are. Never blocks."""

    def attach(self, sub: Subscriber) -> None: ...
    def detach(self, sub: Subscriber) -> None: ...
    def publish(self, user_ids: Iterable[str], event: Frame, *,
                exclude: str | None = None) -> None:
        """To every connection of these users, but the connection `exclude` (an id)."""
        ...
    def send_to(self, user_id: str, connection_id: str, event: Frame, *,
                node: str = "") -> None:
        """To one connection of a user (a call's device), on `node` ("" = this one)."""
        ...
    def reach(self, user_id: str) -> int:
        """How many places a frame to the user would reach now: this node's connections
        of the user plus the other nodes that have one (0: offline everywhere)."""
        ...
    def nodes_of(self, user_id: str) -> frozenset[str]:
        """The other nodes where the user has connections, as far as this node knows."""
        ...
    def on_node_lost(self, callback: Callable[[str], None]) -> None:
        """`callback(instance)` when another node stopped heartbeating or left."""
        ...
    def local(self, user_id: str) -> Sequence[Subscriber]: ...


class CallBus(Protocol):
    """Call signals to another node (the owner of a call, or a device's node). Never
    blocks; best effort (a lost signal is healed by the ring timeout or NODE_TTL)."""

    def signal(self, instance: str, signal: CallSignal) -> None: ...


class Directory(Protocol):
    """Which users are online anywhere in the cluster (single node: this node)."""

    async def set_online(self, user_id: str) -> bool:
        """This node has its first connection of the user. True if the user was offline
        everywhere until now (announce it)."""
        ...

    async def set_offline(self, user_id: str) -> bool:
        """This node has no connection of the user left. True if the user is now offline
        everywhere (announce it)."""
        ...

    async def online(self, user_ids: Sequence[str]) -> set[str]: ...

    async def instance_alive(self, instance: str) -> bool:
        """Whether a node instance is alive now (a call claim of a dead one is stale)."""
        ...

    async def members_changed(self, conversation_id: str) -> None:
        """Cluster: tell the other nodes to drop what they cached about the conversation's
        members (best effort: without Redis their caches expire by themselves)."""
        ...

    def on_members_changed(self, callback: Callable[[str | None], None]) -> None:
        """Cluster: call `callback(conversation_id)` when another node changed members, and
        `callback(None)` when notes may have been missed (drop everything cached)."""
        ...

    @property
    def confirmed(self) -> bool:
        """True while this node hears every other node's notes (single node: always).
        While False, cached membership is not trusted: the database is asked."""
        ...

    async def sessions_revoked(self, session_ids: list[str]) -> None:
        """Cluster: tell the other nodes these sessions are revoked (best effort: they also
        poll the database)."""
        ...

    def on_sessions_revoked(self, callback: Callable[[list[str]], None]) -> None:
        """Cluster: call `callback(session_ids)` when another node revoked sessions."""
        ...

    async def privacy_changed(self, user_ids: list[str]) -> None:
        """Cluster: tell the other nodes to drop what they cached about these users' blocks
        and privacy settings (best effort: without Redis their caches expire by themselves)."""
        ...

    def on_privacy_changed(self, callback: Callable[[list[str] | None], None]) -> None:
        """Cluster: call `callback(user_ids)` when another node changed blocks or privacy
        settings, and `callback(None)` when notes may have been missed (drop everything)."""
        ...


class BlobStore(Protocol):
    """Bytes by their SHA-256 (hex), content-addressed: the same bytes are stored once.
    Every call raises Unavailable when the storage cannot be reached; the caller bounds it."""

    async def put_file(self, path: Path, *, sha256: str, size: int) -> None:
        """Store the file at `path` (a finished local temp file whose digest the caller
        computed) under `sha256`, atomically: a reader sees all of it or nothing. The file
        is consumed (moved or deleted). Storing bytes that exist already is a no-op."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    def read(self, sha256: str, *, first: int = 0,
             last: int | None = None) -> AsyncIterator[bytes]:
        """The bytes first..last (inclusive; None: to the end), in chunks. Raises NotFound."""
        ...

    async def delete(self, sha256: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...

    def presigned_url(self, sha256: str, *, ttl: float, filename: str, content_type: str,
                      disposition: str) -> str | None:
        """A short-lived URL the client may fetch the bytes from directly (S3), with the
        response headers set; None where the node serves them itself (local disk)."""
        ...


class UploadStore(Protocol):
    """Upload records and which messages carry them. Each method is one transaction."""

    async def create_upload(self, upload: Upload) -> None: ...
    async def get_upload(self, upload_id: str) -> Upload | None: ...
    async def get_uploads(self, upload_ids: Sequence[str]) -> list[Upload]: ...
    async def usage(self, owner_id: str) -> int:
        """Bytes of the owner's uploads (the quota)."""
        ...
    async def can_read(self, upload_id: str, user_id: str) -> bool:
        """The uploader, or a member of a conversation where a message carries it."""
        ...
    async def attachments_of(self, message_ids: Sequence[str]) -> dict[str, list[Upload]]:
        """message id -> its uploads in position order (messages without any are absent)."""
        ...
    async def release(self, message_id: str) -> list[Upload]:
        """Drop a message's attachments; returns those of its uploads no message carries
        any more (their records are deleted; the caller deletes unshared blobs)."""
        ...
    async def orphans(self, before: datetime, *, limit: int) -> list[Upload]:
        """Uploads created before `before` that no message ever carried."""
        ...
    async def delete_uploads(self, upload_ids: Sequence[str]) -> None: ...
    async def blob_in_use(self, sha256: str) -> bool:
        """Whether any upload's original or thumbnail is this blob."""
        ...
