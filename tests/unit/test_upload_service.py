"""UploadService and attachments on the in-memory store and a real blob directory: the
rules without a server (quota, sniffing, attachments only of one's own uploads, signed URLs
in the fanned-out message, release, the orphan sweep)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from chatsrv.adapters.blobs.local import LocalBlobStore
from chatsrv.adapters.memory import LocalRouter
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory.uploads import MemoryUploadStore
from chatsrv.adapters.storage.memory_changes import MemoryChanges
from chatsrv.domain.errors import Invalid, TooLarge
from chatsrv.metrics import Metrics
from chatsrv.services.changes import ChangeService
from chatsrv.services.commit import GroupCommitter
from chatsrv.services.membership import MembershipCache
from chatsrv.services.messaging import MessagingService
from chatsrv.services.uploads import UploadLimits, UploadService, UrlSigner
from tests.unit.conftest import Inbox, World

LIMITS = UploadLimits(max_bytes=1000, quota_bytes=1500, max_attachments=2, thumbnail_px=64,
                      max_pixels=10_000, image_timeout=5, read_timeout=5, url_ttl=600,
                      orphan_ttl=3600, sweep_interval=60, op_timeout=5)


async def _body(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[World, UploadService]]:
    store = MemoryStore()
    router = LocalRouter()
    uploads = UploadService(MemoryUploadStore(store), LocalBlobStore(tmp_path / "blobs"),
                            tmp_dir=tmp_path / "tmp", limits=LIMITS,
                            signer=UrlSigner(b"k" * 32, 600))
    commits = GroupCommitter(store, Metrics(), max_batch=8, queue_size=16, writers=1)  # type: ignore[arg-type]
    members = MembershipCache(store, ttl=5.0)  # type: ignore[arg-type]
    changes = ChangeService(store, MemoryChanges(store), router, members,  # type: ignore[arg-type]
                            max_content_chars=100, edit_window=0, page_size=10,
                            release=uploads.release_attachments)
    messaging = MessagingService(store, router, members,  # type: ignore[arg-type]
                                 commits, max_content_chars=100, history_max_limit=10,
                                 history_default_limit=10, sync_page_size=10, uploads=uploads,
                                 changes=changes)
    async with trio.open_nursery() as nursery:
        await nursery.start(commits.run_lane, 0, messaging.announce)
        world = World(store, router, messaging, None, None, commits, None, nursery,  # type: ignore[arg-type]
                      changes)
        yield world, uploads
        nursery.cancel_scope.cancel()


async def test_quota_size_and_sniffing(node: tuple[World, UploadService]) -> None:
    world, uploads = node
    a = await world.user()
    up = await uploads.receive(a.id, name="../x.txt", chunks=_body(b"t" * 900),
                               declared_size=None)
    assert (up.name, up.content_type, up.size) == ("x.txt", "text/plain", 900)
    with pytest.raises(TooLarge):
        await uploads.receive(a.id, name=None, chunks=_body(b"t" * 1001), declared_size=None)
    with pytest.raises(TooLarge) as quota:
        await uploads.receive(a.id, name=None, chunks=_body(b"t" * 700), declared_size=None)
    assert quota.value.code == "quota_exceeded"
    with pytest.raises(Invalid):
        await uploads.receive(a.id, name=None, chunks=_body(b""), declared_size=None)


async def test_attachments_fan_out_with_signed_urls_and_release(
        node: tuple[World, UploadService]) -> None:
    world, uploads = node
    a, b = await world.user(), await world.user()
    conv = await world.conversation(a, b)
    inbox: Inbox = world.connect(b)
    up = await uploads.receive(a.id, name="n.pdf", chunks=_body(b"%PDF-1.4 x"),
                               declared_size=10)
    theirs = await uploads.receive(b.id, name="t", chunks=_body(b"b's"), declared_size=3)
    with pytest.raises(Invalid):
        await world.messaging.send(a.id, conversation_id=conv, content="", attachments=[theirs.id])
    with pytest.raises(Invalid):
        await world.messaging.send(a.id, conversation_id=conv, content="",
                                   attachments=[up.id] * 3)  # over MAX_ATTACHMENTS
    msg, _ = await world.messaging.send(a.id, conversation_id=conv, content="",
                                        attachments=[up.id])
    with trio.fail_after(5):
        while not inbox.of("new_message"):
            await trio.testing.wait_all_tasks_blocked()
    [att] = inbox.of("new_message")[0].attachments
    assert att.id == up.id and att.url.startswith(f"/api/uploads/{up.id}?sig=")
    sig = att.url.split("sig=")[1]
    assert (await uploads.readable(None, up.id, variant="file", sig=sig)).id == up.id
    assert (await uploads.readable(b.id, up.id, variant="file", sig=None)).id == up.id
    assert await uploads.release_attachments(msg.id) == 1
    [page], _ = await world.messaging.history(b.id, conv, limit=None)
    assert page.attachments == ()


async def test_sweep_keeps_sent_uploads(node: tuple[World, UploadService]) -> None:
    world, uploads = node
    a, b = await world.user(), await world.user()
    conv = await world.conversation(a, b)
    sent = await uploads.receive(a.id, name=None, chunks=_body(b"sent"), declared_size=None)
    await uploads.receive(a.id, name=None, chunks=_body(b"never sent"), declared_size=None)
    await world.messaging.send(a.id, conversation_id=conv, content="x", attachments=[sent.id])
    assert await uploads.sweep() == 0
    uploads.limits = replace(LIMITS, orphan_ttl=-1)
    assert await uploads.sweep() == 1
    assert (await uploads.readable(b.id, sent.id, variant="file", sig=None)).id == sent.id
