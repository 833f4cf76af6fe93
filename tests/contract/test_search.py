"""The search contract (SearchIndex): the same tests in memory, on SQLite (FTS5) and on
PostgreSQL (tsvector + GIN)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import trio_asyncio

from chatsrv.adapters.storage import migrate as migrations
from chatsrv.adapters.storage.base import Op, exec_
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory_search import MemorySearchIndex
from chatsrv.adapters.storage.search import SqlSearchIndex
from chatsrv.adapters.storage.sql import SqlStore
from chatsrv.config import Settings
from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Message, User, new_id, utcnow
from chatsrv.domain.ports import SearchIndex, Store
from chatsrv.domain.search import SearchCursor, parse_query
from chatsrv.wiring import open_database
from tests.conftest import BACKENDS, fresh_pg_database
from tests.contract.conftest import beside
from tests.contract.test_store import make_conversation, make_user

T0 = utcnow().replace(microsecond=0) - timedelta(days=1)


@pytest.fixture
def index(store: Store) -> SearchIndex:
    return beside(store, MemorySearchIndex, SqlSearchIndex)


async def post(store: Store, conv: str, sender: User, text: str, *,
               at: datetime | None = None) -> Message:
    message, _ = await store.append_message(
        message_id=new_id(), conversation_id=conv, sender_id=sender.id, content=text,
        message_type="text", client_msg_id=None, created_at=at or utcnow())
    return message


async def set_content(store: Store, message: Message, content: str) -> None:
    """What an edit (new content) and a delete (content "") do to the row, and nothing
    else: the index must follow by itself."""
    if isinstance(store, MemoryStore):
        conv = store._conversations[message.conversation_id]
        conv.messages[message.seq - 1] = replace(message, content=content)
        return
    assert isinstance(store, SqlStore)

    def op() -> Op[None]:
        yield exec_("UPDATE messages SET content = $2 WHERE id = $1", message.id, content)

    await store.db.run(op())


async def find(index: SearchIndex, user: User, q: str, *, conversation_id: str | None = None,
               before: SearchCursor | None = None, limit: int = 50) -> list[str]:
    found = await index.search_messages(user.id, parse_query(q), conversation_id=conversation_id,
                                        before=before, limit=limit)
    return [m.content for m in found]


async def test_every_word_must_occur_newest_first(store: Store, index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    texts = ["lunch at noon?", "lunch tomorrow then", "no lunch today", "dinner tomorrow"]
    for i, text in enumerate(texts):
        await post(store, ab, a if i % 2 else b, text, at=T0 + timedelta(minutes=i))
    assert await find(index, a, "lunch") == ["no lunch today", "lunch tomorrow then",
                                             "lunch at noon?"]
    assert await find(index, b, "tomorrow LUNCH") == ["lunch tomorrow then"]
    assert await find(index, a, "lunch dinner") == []
    assert await find(index, a, "lunc") == []  # words, not substrings


async def test_diacritics_and_case_are_ignored(store: Store, index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    await post(store, ab, a, "Un café crème, s'il vous plaît", at=T0)
    await post(store, ab, b, "naive cafe", at=T0 + timedelta(seconds=1))
    await post(store, ab, b, "Ärger in Zürich", at=T0 + timedelta(seconds=2))
    assert await find(index, a, "cafe") == ["naive cafe", "Un café crème, s'il vous plaît"]
    assert await find(index, a, "CAFÉ creme") == ["Un café crème, s'il vous plaît"]
    assert await find(index, a, "plait") == ["Un café crème, s'il vous plaît"]
    assert await find(index, a, "arger zurich") == ["Ärger in Zürich"]


async def test_text_that_looks_like_markup_is_words(store: Store, index: SearchIndex) -> None:
    # PostgreSQL's parser drops what looks like an XML tag or entity unless told otherwise
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    await post(store, ab, a, "meet at the <Café> &amp; bring <b>snacks</b>, I <3 it", at=T0)
    for q in ["cafe", "<café>", "snacks", "amp", "b", "<3"]:
        assert len(await find(index, a, q)) == 1, q


async def test_phrases_and_prefixes(store: Store, index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    await post(store, ab, a, "the quick brown fox", at=T0)
    await post(store, ab, a, "brown, quick!", at=T0 + timedelta(seconds=1))
    await post(store, ab, a, "an example of prefixes", at=T0 + timedelta(seconds=2))
    assert await find(index, a, '"quick brown"') == ["the quick brown fox"]
    assert await find(index, a, "quick brown") == ["brown, quick!", "the quick brown fox"]
    assert await find(index, a, "pref* exam*") == ["an example of prefixes"]
    assert await find(index, a, '"quick brown') == ["the quick brown fox"]  # unclosed quote


async def test_only_my_conversations_and_not_after_leaving(store: Store,
                                                            index: SearchIndex) -> None:
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    group = await make_conversation(store, a, b, c, group=True)
    bc = await make_conversation(store, b, c)
    await post(store, ab, a, "secret plan one", at=T0)
    await post(store, group, c, "secret plan two", at=T0 + timedelta(seconds=1))
    await post(store, bc, c, "secret plan three", at=T0 + timedelta(seconds=2))
    assert await find(index, a, "secret") == ["secret plan two", "secret plan one"]
    assert await find(index, c, "secret") == ["secret plan three", "secret plan two"]
    assert await find(index, a, "secret", conversation_id=ab) == ["secret plan one"]
    assert await find(index, a, "secret", conversation_id=bc) == []  # not a's
    assert (await store.remove_member(group, a.id))[0]
    assert await find(index, a, "secret") == ["secret plan one"]
    assert await find(index, a, "secret", conversation_id=group) == []
    stranger = await make_user(store)
    assert await find(index, stranger, "secret") == []


async def test_edits_reindex_and_deleted_messages_never_match(store: Store,
                                                               index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    typo = await post(store, ab, a, "meet at the libary", at=T0)
    gone = await post(store, ab, a, "my password is hunter2 library", at=T0 + timedelta(seconds=1))
    await set_content(store, typo, "meet at the library")
    assert await find(index, a, "libary") == []
    assert await find(index, a, "library") == ["my password is hunter2 library",
                                               "meet at the library"]
    await set_content(store, gone, "")
    assert await find(index, a, "hunter2") == []
    assert await find(index, a, "library") == ["meet at the library"]


async def test_pages_by_cursor_with_ties_broken_by_id(store: Store, index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    # three at the same instant: the order among them is by id, and no page loses one
    at = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1), T0 + timedelta(seconds=1),
          T0 + timedelta(seconds=2)]
    posted = [await post(store, ab, a, f"page item {i}", at=t) for i, t in enumerate(at)]
    expected = sorted(posted, key=lambda m: (m.created_at, m.id), reverse=True)
    seen: list[str] = []
    before = None
    for _ in range(5):
        page = await index.search_messages(a.id, parse_query("item"), conversation_id=None,
                                           before=before, limit=2)
        seen += [m.id for m in page]
        if len(page) < 2:
            break
        before = SearchCursor(page[-1].created_at, page[-1].id)
    assert seen == [m.id for m in expected]


HOSTILE = ['"', "a & | !", "NEAR(", "*", "x" * 200, "' OR 1=1 --", "a:*", "!!a", "a <-> b",
           "\\", "'", "''", '"a" NEAR("b")', "a AND OR NOT", "(a", "a)", "^a", "a:b:c",
           "col:a", "a* *b", "{a}", "\\'a", "a\\", "東京*", "😀 a", "-a", "+a", "a~2"]


async def test_hostile_queries_are_refused_or_searched(store: Store, index: SearchIndex) -> None:
    a, b = await make_user(store), await make_user(store)
    ab = await make_conversation(store, a, b)
    await post(store, ab, a, "a b c: (a) NEAR x 東京タワー 😀")
    rng = random.Random(9)
    alphabet = [*'"*&|!():-_ \'\\<>^~+{}NEARab東😀\u0301', " AND ", " OR ", " NOT "]
    queries = HOSTILE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
                         for _ in range(150)]
    for q in queries:
        try:
            query = parse_query(q)
        except Invalid:
            continue
        await index.search_messages(a.id, query, conversation_id=None, before=None, limit=5)
    assert await find(index, a, "a & | !") == ["a b c: (a) NEAR x 東京タワー 😀"]
    assert await find(index, a, "東京*") == ["a b c: (a) NEAR x 東京タワー 😀"]
    with pytest.raises(Invalid):
        parse_query("x" * 2000)


@pytest.fixture
def fresh_settings(sql_settings: Settings) -> Iterator[Settings]:
    """The backend's settings on a database of its own (the PostgreSQL one of the run is
    migrated by the other tests already)."""
    if sql_settings.database_url is None:
        yield sql_settings  # a SQLite file in this test's tmp_path
        return
    with fresh_pg_database("chatsrv_search") as dsn:
        yield dataclasses.replace(sql_settings, database_url=dsn)


@pytest.mark.parametrize("backend", BACKENDS)  # the migration is the SQL adapters' own
async def test_the_migration_indexes_existing_messages(
        fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    every = migrations.migration_files
    async with trio_asyncio.open_loop(), open_database(fresh_settings) as db:
        monkeypatch.setattr(migrations, "migration_files",
                            lambda d: [p for p in every(d) if p.name < "009"])
        await migrations.migrate(db)
        store = SqlStore(db)
        a, b = await make_user(store), await make_user(store)
        ab = await make_conversation(store, a, b)
        await post(store, ab, a, "written before search existed")
        monkeypatch.setattr(migrations, "migration_files", every)
        assert "009_search" in await migrations.migrate(db)
        assert await find(SqlSearchIndex(db), b, "before existed") == [
            "written before search existed"]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_both_postgres_plans_find_the_same(store: Store, index: SearchIndex,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # small scopes are read without the GIN index (SCOPE_SCAN_MAX); large ones use it
    from chatsrv.adapters.storage import search as sql_search

    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab, bc = await make_conversation(store, a, b), await make_conversation(store, b, c)
    await post(store, ab, a, "Crème brûlée tonight", at=T0)
    await post(store, ab, b, "brulee again?", at=T0 + timedelta(seconds=1))
    await post(store, bc, c, "brulee elsewhere", at=T0 + timedelta(seconds=2))
    for limit in (sql_search.SCOPE_SCAN_MAX, -1):
        monkeypatch.setattr(sql_search, "SCOPE_SCAN_MAX", limit)
        assert await find(index, a, "brulee") == ["brulee again?", "Crème brûlée tonight"]
        assert await find(index, a, "bru*", conversation_id=ab) == [
            "brulee again?", "Crème brûlée tonight"]
        assert await find(index, a, "brulee", conversation_id=bc) == []
        assert await find(index, c, '"creme brulee"') == []
