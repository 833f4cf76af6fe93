"""The search query language, snippets and cursors (domain/search.py), and the service's
rules on the in-memory store."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory_search import MemorySearchIndex
from chatsrv.adapters.storage.search import fts5_match_of, tsquery_of
from chatsrv.domain.errors import Invalid, NotFound
from chatsrv.domain.search import (
    MAX_QUERY_CHARS,
    Term,
    decode_cursor,
    encode_cursor,
    matches,
    parse_query,
    snippet,
)
from chatsrv.services.membership import MembershipCache
from chatsrv.services.search import SearchService
from tests.contract.test_store import make_conversation, make_user, send


def test_words_quoted_phrases_and_prefixes() -> None:
    q = parse_query('hello "quick  brown" fox* a* x.*')
    assert q.terms == (Term("hello"), Term("quick brown", phrase=True),
                       Term("fox", prefix=True), Term("a"), Term("x."))


@pytest.mark.parametrize("q", ['"', "*", "&", "| ! &", "()", '""', "-", "_", "  "])
def test_a_query_without_a_word_is_refused(q: str) -> None:
    with pytest.raises(Invalid) as exc:
        parse_query(q)
    assert exc.value.details["field"] == "q"


def test_operators_are_plain_characters() -> None:
    q = parse_query("a & | ! NEAR( b:* c)")
    assert [t.text for t in q.terms] == ["a", "NEAR(", "b:", "c)"]
    assert not any(t.prefix for t in q.terms)


def test_too_long_or_too_many_terms_is_refused() -> None:
    with pytest.raises(Invalid):
        parse_query("x" * (MAX_QUERY_CHARS + 1))
    with pytest.raises(Invalid):
        parse_query(" ".join(f"w{i}" for i in range(17)))
    assert len(parse_query(" ".join(f"w{i}" for i in range(16))).terms) == 16


def test_matching_folds_case_and_diacritics_and_keeps_phrases_in_order() -> None:
    assert matches(parse_query("cafe"), "Un CAFÉ crème")
    assert matches(parse_query("café CREME"), "un cafe creme")
    assert matches(parse_query("cafe"), "cafe\u0301 decomposed")
    assert matches(parse_query('"quick brown"'), "the quick, brown fox")
    assert not matches(parse_query('"quick brown"'), "the brown quick fox")
    assert matches(parse_query("exam*"), "see example.com")
    assert not matches(parse_query("exam"), "see example.com")
    assert not matches(parse_query("cafe tea"), "café only")
    assert not matches(parse_query("anything"), "")


def test_the_query_languages_get_quoted_literals_only() -> None:
    q = parse_query("it's back\\slash \"say \"\"hi\" pre*")
    assert tsquery_of(q) == "'it\\'s' & 'back\\\\slash' & 'say' & 'hi' & 'pre':*"
    assert fts5_match_of(q) == '"it\'s" AND "back\\slash" AND "say" AND "hi" AND "pre"*'


def test_snippet_escapes_everything_and_marks_the_hits() -> None:
    s = snippet(parse_query("cafe"), '<b>Café</b> & "tea" \'x\'')
    assert s == ("&lt;b&gt;<mark>Café</mark>&lt;/b&gt; &amp; &quot;tea&quot; &#x27;x&#x27;")
    s = snippet(parse_query("<mark>"), "a <mark> b mark")
    assert s == "a &lt;<mark>mark</mark>&gt; b <mark>mark</mark>"
    assert snippet(parse_query("pre*"), "Prefix, prefixes") == (
        "<mark>Prefix</mark>, <mark>prefixes</mark>")


def test_snippet_of_a_long_message_is_cut_around_the_first_hit() -> None:
    content = " ".join(["filler"] * 60) + " needle " + " ".join(["after"] * 60)
    s = snippet(parse_query("needle"), content)
    assert s.startswith("\u2026") and s.endswith("\u2026")
    assert "<mark>needle</mark>" in s
    assert len(s.replace("<mark>", "").replace("</mark>", "")) <= 162
    # no hit found by this tokenizer (the database's differs): the start of the content
    assert snippet(parse_query("zzz"), content).startswith("filler filler")


def test_random_input_never_breaks_parsing_or_snippets() -> None:
    rng = random.Random(14)
    alphabet = [*'"*&|!():-_ \'\\<>^~+NEARaéß東😀\u0301', "AND", "OR", "NOT"]
    for _ in range(2000):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        try:
            query = parse_query(q)
        except Invalid:
            continue
        tsquery_of(query), fts5_match_of(query)
        assert "<" not in snippet(query, q).replace("<mark>", "").replace("</mark>", "")


def test_cursor_round_trip_and_garbage() -> None:
    at = datetime(2026, 12, 2, 14, 0, 0, 123456, tzinfo=UTC)
    mid = "3f2b8a4e-3c1d-4e5f-9a0b-1c2d3e4f5a6b"
    c = decode_cursor(encode_cursor(at, mid))
    assert (c.created_at, c.message_id) == (at, mid)
    for bad in ["", "x", "!!!", encode_cursor(at, "not-a-uuid"), "A" * 500,
                encode_cursor(at.replace(tzinfo=None), mid)]:
        with pytest.raises(Invalid):
            decode_cursor(bad)


async def test_service_narrows_to_my_conversation_and_refuses_others() -> None:
    store = MemoryStore()
    svc = SearchService(MemorySearchIndex(store), MembershipCache(store, ttl=5.0),
                        default_limit=2, max_limit=3)
    a, b, c = await make_user(store), await make_user(store), await make_user(store)
    ab, bc = await make_conversation(store, a, b), await make_conversation(store, b, c)
    for i in range(5):
        await send(store, ab, a, f"hello number {i}")
    await send(store, bc, b, "hello from elsewhere")
    page = await svc.search(a.id, "hello")
    assert [h.message.content for h in page.hits] == ["hello number 4", "hello number 3"]
    assert page.has_more and page.next_before
    assert page.hits[0].snippet == "<mark>hello</mark> number 4"
    rest = await svc.search(a.id, "hello", limit=100, before=page.next_before)
    assert [h.message.content for h in rest.hits] == ["hello number 2", "hello number 1",
                                                       "hello number 0"]
    assert not rest.has_more and rest.next_before is None
    assert len((await svc.search(b.id, "hello", conversation_id=bc)).hits) == 1
    with pytest.raises(NotFound):
        await svc.search(a.id, "hello", conversation_id=bc)
    with pytest.raises(Invalid):
        await svc.search(a.id, "hello", limit=0)
    with pytest.raises(Invalid):
        await svc.search(a.id, "hello", conversation_id="nope")
