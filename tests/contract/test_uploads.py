"""The UploadStore contract, in memory, on SQLite and on PostgreSQL: attachments committed
with their message (single and group commit), who may read, release, orphans, shared
blobs."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from chatsrv.adapters.storage.memory.uploads import MemoryUploadStore
from chatsrv.adapters.storage.uploads import SqlUploadStore
from chatsrv.domain.model import Message, User, new_id, utcnow
from chatsrv.domain.ports import Store, UploadStore
from chatsrv.domain.uploads import Upload, attachment_of
from tests.contract.conftest import beside
from tests.contract.test_store import make_conversation, make_user


@pytest.fixture
def uploads(store: Store) -> UploadStore:
    """The uploads beside `store`, on the same tables."""
    return beside(store, MemoryUploadStore, SqlUploadStore)


def _upload(owner: User, data: bytes = b"x", *, age: float = 0.0) -> Upload:
    return Upload(id=new_id(), owner_id=owner.id, name="f", content_type="text/plain",
                  size=len(data), sha256=hashlib.sha256(data).hexdigest(), width=None,
                  height=None, thumbnail_sha256=None,
                  created_at=utcnow() - timedelta(seconds=age))


async def _send(store: Store, conv: str, sender: User, *uploads: Upload) -> Message:
    draft = Message(id=new_id(), conversation_id=conv, seq=0, sender_id=sender.id,
                    content="", message_type="text", client_msg_id=None, created_at=utcnow(),
                    attachments=tuple(attachment_of(u) for u in uploads))
    [outcome] = await store.append_messages([draft])
    assert isinstance(outcome, tuple)
    return outcome[0]


async def test_attachments_travel_with_messages(store: Store, uploads: UploadStore) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    first, second = _upload(a, b"1"), _upload(a, b"2")
    for u in (first, second):
        await uploads.create_upload(u)
    assert not await uploads.can_read(first.id, b.id)
    assert await uploads.can_read(first.id, a.id)
    msg = await _send(store, conv, a, second, first)
    assert [x.id for x in msg.attachments] == [second.id, first.id]
    [page] = await store.list_messages(conv, limit=10)
    assert [x.id for x in page.attachments] == [second.id, first.id]
    stored = await store.get_message(msg.id)
    assert stored is not None and stored.attachments == page.attachments
    assert await uploads.can_read(first.id, b.id) and not await uploads.can_read(first.id, c.id)
    assert await uploads.usage(a.id) == 2 and await uploads.usage(b.id) == 0
    got = await uploads.get_upload(first.id)
    assert got is not None and got.attached_at is not None


async def test_group_commit_links_each_message(store: Store, uploads: UploadStore) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    ups = [_upload(a, bytes([i])) for i in range(3)]
    for u in ups:
        await uploads.create_upload(u)
    drafts = [Message(id=new_id(), conversation_id=conv, seq=0, sender_id=a.id, content="m",
                      message_type="text", client_msg_id=None, created_at=utcnow(),
                      attachments=(attachment_of(u),)) for u in ups]
    outcomes = await store.append_messages(drafts)
    assert all(isinstance(o, tuple) for o in outcomes)
    found = await uploads.attachments_of([d.id for d in drafts])
    assert [found[d.id][0].id for d in drafts] == [u.id for u in ups]


async def test_release_and_orphans(store: Store, uploads: UploadStore) -> None:
    a, b = await make_user(store), await make_user(store)
    conv = await make_conversation(store, a, b)
    shared, alone = _upload(a, b"s", age=10), _upload(a, b"a", age=10)
    orphan, fresh = _upload(a, b"o", age=10), _upload(a, b"f")
    for u in (shared, alone, orphan, fresh):
        await uploads.create_upload(u)
    one = await _send(store, conv, a, shared, alone)
    two = await _send(store, conv, a, shared)
    found = await uploads.orphans(utcnow() - timedelta(seconds=5), limit=100)
    assert orphan.id in {u.id for u in found}
    assert not {shared.id, alone.id, fresh.id} & {u.id for u in found}
    released = await uploads.release(one.id)
    assert [u.id for u in released] == [alone.id]  # `shared` is still in message two
    assert await uploads.get_upload(alone.id) is None
    assert await uploads.can_read(shared.id, b.id)
    assert [u.id for u in await uploads.release(two.id)] == [shared.id]
    assert not await uploads.can_read(shared.id, b.id)
    assert await uploads.blob_in_use(orphan.sha256)
    await uploads.delete_uploads([orphan.id])
    assert not await uploads.blob_in_use(orphan.sha256)
