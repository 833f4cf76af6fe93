"""The blocks and privacy-settings contract (Blocks): the same tests in memory, on SQLite
and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Privacy, new_id, utcnow
from chatsrv.domain.ports import Blocks, Store
from tests.contract.test_store import make_user


async def test_block_is_idempotent_listed_newest_first_and_lifted(
        store: Store, blocks: Blocks) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    t0 = utcnow()
    assert await blocks.block(a.id, b.id, at=t0)
    assert not await blocks.block(a.id, b.id, at=t0 + timedelta(seconds=5))
    assert await blocks.block(a.id, c.id, at=t0 + timedelta(seconds=1))
    listed = await blocks.list_blocks(a.id)
    assert [(x.user.id, x.created_at) for x in listed] == [
        (c.id, t0 + timedelta(seconds=1)), (b.id, t0)]  # the first time counts
    assert listed[0].user.username == c.username
    assert await blocks.list_blocks(b.id) == []
    assert not await blocks.unblock(b.id, a.id)  # only the blocker's block exists
    assert await blocks.unblock(a.id, b.id)
    assert not await blocks.unblock(a.id, b.id)
    assert [x.user.id for x in await blocks.list_blocks(a.id)] == [c.id]


async def test_privacy_sees_blocks_either_way_and_the_settings(
        store: Store, blocks: Blocks) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    assert await blocks.privacy(a.id) == Privacy()
    await blocks.block(a.id, b.id, at=utcnow())
    await blocks.block(c.id, a.id, at=utcnow())
    got = await blocks.privacy(a.id)
    assert got.blocked == {b.id} and got.blocked_by == {c.id}
    assert got.barriers == {b.id, c.id}
    assert (await blocks.privacy(b.id)).barriers == {a.id}
    assert got.presence_visible and got.read_receipts_visible
    assert await blocks.privacy(new_id()) == Privacy()  # unknown: nothing, defaults


async def test_update_profile_changes_only_the_fields_given(
        store: Store, blocks: Blocks) -> None:
    a = await make_user(store)
    user = await blocks.update_profile(a.id, presence_visible=False)
    assert user is not None and not user.presence_visible and user.read_receipts_visible
    assert user.display_name == a.display_name
    user = await blocks.update_profile(a.id, display_name="Renamed",
                                       read_receipts_visible=False)
    assert user is not None and user.display_name == "Renamed"
    assert not user.presence_visible and not user.read_receipts_visible
    stored = await store.get_user(a.id)
    assert stored == user
    p = await blocks.privacy(a.id)
    assert (p.presence_visible, p.read_receipts_visible) == (False, False)
    assert await blocks.update_profile(new_id(), presence_visible=True) is None


async def test_blocking_an_unknown_user_is_refused(store: Store, blocks: Blocks) -> None:
    a = await make_user(store)
    with pytest.raises(Invalid) as exc:
        await blocks.block(a.id, new_id(), at=utcnow())
    assert exc.value.code == "unknown_user"
    assert await blocks.list_blocks(a.id) == []
