"""Uploads in memory: the UploadStore port."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from chatsrv.adapters.storage.memory.base import _atomic, _count, _Faults, _int, _text, _ts, _uuid
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.domain.errors import Conflict
from chatsrv.domain.model import Message
from chatsrv.domain.uploads import Upload


class MemoryUploadStore(_Faults):
    """Implements domain.ports.UploadStore in memory, beside a MemoryStore: the messages
    carrying an upload are the store's messages whose `attachments` name it (as the
    message_attachments rows beside the messages table)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store
        self._uploads: dict[str, Upload] = {}

    def _carriers(self, upload_id: str) -> list[Message]:
        return [m for m in self._store._messages.values()
                if any(a.id == upload_id for a in m.attachments)]

    def _entity(self, u: Upload) -> Upload:
        attached = [m.created_at for m in self._carriers(u.id)]
        return replace(u, attached_at=min(attached) if attached else u.attached_at)

    @_atomic
    def create_upload(self, upload: Upload) -> None:
        uid = _uuid(upload.id, "id")
        if uid in self._uploads:
            raise Conflict("upload id is already in use")
        self._store._existing_user(upload.owner_id)
        _text(upload.name)
        self._uploads[uid] = replace(upload, id=uid, owner_id=_uuid(upload.owner_id, "owner"),
                                     size=_int(upload.size), created_at=_ts(upload.created_at))

    @_atomic
    def get_upload(self, upload_id: str) -> Upload | None:
        u = self._uploads.get(_uuid(upload_id, "upload_id"))
        return None if u is None else self._entity(u)

    @_atomic
    def get_uploads(self, upload_ids: Sequence[str]) -> list[Upload]:
        ids = [_uuid(i, "upload_id") for i in upload_ids]
        return [self._entity(self._uploads[i]) for i in dict.fromkeys(ids) if i in self._uploads]

    @_atomic
    def usage(self, owner_id: str) -> int:
        owner = _uuid(owner_id, "owner_id")
        return sum(u.size for u in self._uploads.values() if u.owner_id == owner)

    @_atomic
    def can_read(self, upload_id: str, user_id: str) -> bool:
        u = self._uploads.get(_uuid(upload_id, "upload_id"))
        uid = _uuid(user_id, "user_id")
        if u is None:
            return False
        return u.owner_id == uid or any(
            uid in self._store._conversations[m.conversation_id].members
            for m in self._carriers(u.id))

    @_atomic
    def attachments_of(self, message_ids: Sequence[str]) -> dict[str, list[Upload]]:
        out: dict[str, list[Upload]] = {}
        for mid in dict.fromkeys(_uuid(i, "message_id") for i in message_ids):
            m = self._store._messages.get(mid)
            found = [self._entity(self._uploads[a.id]) for a in (m.attachments if m else ())
                     if a.id in self._uploads]
            if found:
                out[mid] = found
        return out

    @_atomic
    def release(self, message_id: str) -> list[Upload]:
        m = self._store._messages.get(_uuid(message_id, "message_id"))
        if m is None or not m.attachments:
            return []
        bare = replace(m, attachments=())
        self._store._messages[m.id] = bare
        self._store._conversations[m.conversation_id].messages[m.seq - 1] = bare
        gone = [self._uploads.pop(a.id) for a in m.attachments
                if a.id in self._uploads and not self._carriers(a.id)]
        return gone

    @_atomic
    def orphans(self, before: datetime, *, limit: int) -> list[Upload]:
        found = sorted((u for u in self._uploads.values()
                        if u.attached_at is None and u.created_at < _ts(before)
                        and not self._carriers(u.id)), key=lambda u: u.created_at)
        return found[:_count(limit, "limit")]

    @_atomic
    def delete_uploads(self, upload_ids: Sequence[str]) -> None:
        for upload_id in upload_ids:
            self._uploads.pop(_uuid(upload_id, "upload_id"), None)

    @_atomic
    def blob_in_use(self, sha256: str) -> bool:
        return any(sha256 in (u.sha256, u.thumbnail_sha256) for u in self._uploads.values())
