"""Full-text search over SQL: the SearchIndex port on PostgreSQL (tsvector + GIN) and SQLite
(FTS5). The indexes are kept by the databases (migration 009), so nothing here writes.

User input never reaches either query language as syntax: every term is quoted as a
literal (`tsquery_of`, `fts5_match_of`), and the database's own parser splits it into words
exactly as it split the content (a quoted "foo-bar" is the phrase foo, bar on both).

One operation (one crossing) per search: membership is a semi-join in the search
statement itself, so a user who left a conversation finds nothing of it from the moment the
removal committed. On PostgreSQL the statement runs in a transaction of its own, after
settings that choose its plan (CUSTOM_PLAN, SCOPE_SCAN below).
"""

from __future__ import annotations

from chatsrv.adapters.storage.base import Database, Op, exec_, rows, val
from chatsrv.adapters.storage.rows import MESSAGE_COLS, message_of
from chatsrv.adapters.storage.uploads import load_attachments
from chatsrv.domain.model import Message
from chatsrv.domain.search import SearchCursor, SearchQuery, Term

_COLS = ", ".join("m." + c.strip() for c in MESSAGE_COLS.split(","))
_MINE = "m.conversation_id IN (SELECT conversation_id FROM conversation_members WHERE user_id = $2)"

SEARCH_PG = f"""SELECT {_COLS} FROM messages m
WHERE m.search_vector @@ to_tsquery('chatsrv_search', $1) AND {_MINE}"""
SEARCH_SQLITE = f"""SELECT {_COLS} FROM messages m
WHERE m.rowid IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH $1) AND {_MINE}"""
# optional conditions, numbered from $4 in the order they are added
IN_CONVERSATION = " AND m.conversation_id = ${}"
BEFORE = " AND (m.created_at < ${0} OR (m.created_at = ${0} AND m.id < ${1}))"
ORDER = "\nORDER BY m.created_at DESC, m.id DESC LIMIT $3"
# The best plan depends on the words: a rare one is found through the GIN index, a common
# one by reading the user's conversations and filtering (the index would hand over 40% of
# all messages). A prepared statement switches to a generic plan after five runs, which
# cannot know the words: at 1M messages, "the" took 10 s that way instead of 60 ms.
CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"
# Even a custom plan goes wrong for a word in ~1% of messages: a nested loop over the user's
# conversations, each probing the GIN index, reads the word's whole posting list once per
# conversation (bench/RESULTS.md "Search at 1M messages": 168 ms for 59 conversations and
# 12k messages, 550 ms for a prefix). Reading a user's messages and filtering costs ~5 ms
# per 1,000 whatever the words (54 ms there), so up to SCOPE_SCAN_MAX messages in the
# searched conversations the GIN index is set aside (GIN serves bitmap scans only).
SCOPE_SCAN_MAX = 20_000
SCOPE = """SELECT coalesce(sum(c.last_seq), 0) FROM conversation_members m
JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1"""
SCOPE_SCAN = "SET LOCAL enable_bitmapscan = off"


# as the generated column does (migration 009): the parser would take "<...>" for a tag
_NOT_MARKUP = str.maketrans("<>&", "   ")


def _tsquery_literal(text: str) -> str:
    text = text.translate(_NOT_MARKUP)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def tsquery_of(query: SearchQuery) -> str:
    """to_tsquery input: each term a quoted literal (PostgreSQL splits a literal of several
    words into a phrase), prefixes marked `:*`, all of them ANDed."""
    return " & ".join(_tsquery_literal(t.text) + (":*" if t.prefix else "")
                      for t in query.terms)


def _fts5_term(t: Term) -> str:
    return '"' + t.text.replace('"', '""') + '"' + ("*" if t.prefix else "")


def fts5_match_of(query: SearchQuery) -> str:
    """FTS5 MATCH input: each term an FTS5 string (a phrase of its words), prefixes marked
    `*`, all of them ANDed (FTS5's implicit AND)."""
    return " AND ".join(_fts5_term(t) for t in query.terms)


class SqlSearchIndex:
    """Implements domain.ports.SearchIndex on the SQL store's tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def search_messages(
        self, user_id: str, query: SearchQuery, *, conversation_id: str | None,
        before: SearchCursor | None, limit: int,
    ) -> list[Message]:
        if self.db.dialect == "postgres":
            sql, match = SEARCH_PG, tsquery_of(query)
        else:
            sql, match = SEARCH_SQLITE, fts5_match_of(query)
        args: list[object] = [match, user_id, limit]
        if conversation_id is not None:
            args.append(conversation_id)
            sql += IN_CONVERSATION.format(len(args))
        if before is not None:
            args += [before.created_at, before.message_id]
            sql += BEFORE.format(len(args) - 1, len(args))
        statement = sql + ORDER
        pg = self.db.dialect == "postgres"

        def op() -> Op[list[Message]]:
            if pg:
                yield exec_(CUSTOM_PLAN)
                scope = yield (val(SCOPE + " AND c.id = $2", user_id, conversation_id)
                               if conversation_id is not None else val(SCOPE, user_id))
                if scope <= SCOPE_SCAN_MAX:
                    yield exec_(SCOPE_SCAN)
            found = yield rows(statement, *args)
            return (yield from load_attachments(self.db.dialect,
                                                [message_of(r) for r in found]))

        # PostgreSQL: in a transaction of its own, for SET LOCAL (SQLite: the reader lane)
        return await self.db.run(op(), write=pg)

