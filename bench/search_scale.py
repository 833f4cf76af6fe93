"""Search at 1M messages on PostgreSQL: search latency, and whether the index slows or
stalls single-message inserts during a burst (the GIN pending-list stalls of
matrix-org/synapse#4219). A measurement, not a test:

    .venv/bin/python -m bench.search_scale [--messages 1000000] [--burst 4000] [--writers 8]
        [--repeat 30] [--dsn postgresql://postgres@127.0.0.1/postgres] [--keep]

Creates a scratch database (dropped at the end unless --keep) and, in order:
1. the schema without search (migrations before 009) and `--messages` messages generated
   in SQL: words from a fixed vocabulary drawn Zipf-like (a few very common words, a long
   tail of rare made-up ones, some accented), 4-15 words each, 5,000 group conversations of
   equal size, a year of timestamps;
2. an insert burst without search: `--writers` tasks each committing its share of
   `--burst` messages one at a time through SqlStore.append_message (the server's
   group-commit statement, a batch of one), the latency of each;
3. migration 009, timed (the rewrite of the table for the stored column, the GIN build);
4. the same burst with the index (fastupdate off, as migrated);
5. search latency through SqlSearchIndex, `--repeat` times per query, for a user in 50
   conversations, over all of them and narrowed to one;
6. the burst once more with fastupdate on (the default 4 MB pending list: the setting
   that stalls), `--stall-burst` messages, for comparison.
Prints Markdown for bench/RESULTS.md ("Search at 1M messages").
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import trio
import trio_asyncio

from bench.stats import quantile
from chatsrv.adapters.storage import migrate as migrations
from chatsrv.adapters.storage.base import Database, Op, Row, exec_, rows, script
from chatsrv.adapters.storage.messages import INSERT_MESSAGE
from chatsrv.adapters.storage.postgres import open_postgres
from chatsrv.adapters.storage.search import SqlSearchIndex, fts5_match_of, tsquery_of
from chatsrv.adapters.storage.sql import INSERT_CONVERSATION, INSERT_MEMBER, INSERT_USER, SqlStore
from chatsrv.adapters.storage.sqlite import open_sqlite
from chatsrv.domain.model import new_id, utcnow
from chatsrv.domain.search import parse_query

COMMON = ("the to I you a and is it of in that for we on ok be at this have so but not are "
          "with can do just me was my will what if no yes go get like know how now all up "
          "your one there out about time see then good think when here tomorrow today "
          "meeting call later thanks please send lunch work back home need want").split()
ACCENTED = ("café crème naïve Zürich Ärger déjà über façade résumé jalapeño São Paulo Kraków "
            "Ångström piñata fiancée Málaga Straße Łódź Øresund").split()
SYLLABLES = ("ka lo mi ren tu sa vel dor fin ga hu ix jo ker lum nap or pli qua rok sim "
             "tor ux vin wa xel yor zed").split()
USERS = 2000
CONVERSATIONS = 5000
SEARCHER_CONVERSATIONS = 50
SKEW = 3.0  # word index = n * random()^SKEW: "the" is in ~40% of messages

SETUP = f"""
INSERT INTO users (id, username, email, display_name, password_hash, created_at)
SELECT gen_random_uuid(), 'bench' || i, 'bench' || i || '@example.com', 'Bench ' || i, 'x',
       now() FROM generate_series(1, {USERS}) i;
CREATE TABLE bench_users AS SELECT row_number() OVER (ORDER BY username) AS n, id FROM users;
INSERT INTO conversations (id, type, name, created_by, created_at)
SELECT gen_random_uuid(), 'group', 'g' || i, u.id, timestamptz '2025-11-30 00:00+00'
FROM generate_series(1, {CONVERSATIONS}) i JOIN bench_users u ON u.n = (i * 7) % {USERS} + 1;
CREATE TABLE bench_conversations AS
SELECT row_number() OVER (ORDER BY c.name) AS n, c.id, c.created_by FROM conversations c;
INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
SELECT c.id, c.created_by, 'admin', timestamptz '2025-11-30 00:00+00' FROM bench_conversations c;
INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
SELECT c.id, u.id, 'member', timestamptz '2025-11-30 00:00+00'
FROM bench_conversations c CROSS JOIN generate_series(1, 3) k
JOIN bench_users u ON u.n = (c.n * 13 + k * 101) % {USERS} + 1
ON CONFLICT DO NOTHING;
INSERT INTO conversation_members (conversation_id, user_id, role, joined_at)
SELECT c.id, (SELECT id FROM bench_users WHERE n = 1), 'member', timestamptz '2025-11-30 00:00+00'
FROM bench_conversations c WHERE c.n <= SEARCHER_LIMIT ON CONFLICT DO NOTHING;
"""
# rows g in [$3, $4]: conversation (g - 1) % n + 1, so each conversation's seqs are 1, 2, ...
LOAD = f"""
INSERT INTO messages (id, conversation_id, seq, sender_id, content, message_type, created_at)
SELECT gen_random_uuid(), c.id, (g - 1) / $2 + 1, c.created_by,
       (SELECT string_agg(($1::text[])[1 + floor(power(random(), {SKEW})
                                                 * cardinality($1::text[]))::int], ' ')
        FROM generate_series(1, 4 + g % 12)),
       'text', timestamptz '2025-12-01 00:00+00' + g * interval '31 seconds'
FROM generate_series($3::int, $4::int) AS g
JOIN bench_conversations c ON c.n = (g - 1) % $2 + 1"""
FINISH = """
UPDATE conversations AS c SET last_seq = m.s
FROM (SELECT conversation_id, max(seq) AS s FROM messages GROUP BY 1) m
WHERE m.conversation_id = c.id;
ANALYZE;
"""


def vocabulary(rng: random.Random) -> list[str]:
    """Common words first (picked most), then accented ones, then a long tail of made-up
    rare words."""
    tail = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
                   for _ in range(12_000)} - set(COMMON))
    rng.shuffle(tail)
    return COMMON + ACCENTED + tail[:8000]


def queries(words: Sequence[str]) -> dict[str, str]:
    """Label -> q: from a word in ~40% of messages down to one in a few hundred."""
    mid, rare = words[len(COMMON) + len(ACCENTED) + 30], words[len(words) // 2]
    return {
        "common word `the`": "the",
        "two common words `meeting tomorrow`": "meeting tomorrow",
        "accented, folded `cafe`": "cafe",
        f"mid-frequency word `{mid}`": mid,
        f"rare word `{rare}`": rare,
        'phrase `"see you"`': '"see you"',
        "prefix `tomo*`": "tomo*",
        "no match `qqqxxyzzy`": "qqqxxyzzy",
    }


def content(rng: random.Random, words: Sequence[str]) -> str:
    n = len(words)
    return " ".join(words[int(n * rng.random() ** SKEW)] for _ in range(rng.randint(4, 15)))


def ms_summary(seconds: Sequence[float]) -> tuple[float, float, float]:
    values = sorted(s * 1000 for s in seconds)
    return quantile(values, 0.5), quantile(values, 0.99), values[-1]


async def fetch(db: Database, sql: str, *args: object) -> list[Row]:
    def op() -> Op[list[Row]]:
        return (yield rows(sql, *args))

    return await db.run(op(), write=False)


async def run_script(db: Database, sql: str, *, atomic: bool = True) -> None:
    def op() -> Op[None]:
        yield script(sql)

    await db.run(op(), atomic=atomic)


async def timed(what: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await what()
    return time.perf_counter() - t0


async def burst(store: SqlStore, convs: Sequence[Row], words: Sequence[str], *, total: int,
                writers: int, seed: int) -> tuple[list[float], float]:
    """`writers` tasks committing `total` messages one at a time; (latencies, wall)."""
    latencies: list[float] = []

    async def writer(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        for _ in range(total // writers):
            conv = rng.choice(convs)
            text = content(rng, words)
            t0 = time.perf_counter()
            await store.append_message(
                message_id=new_id(), conversation_id=str(conv["id"]),
                sender_id=str(conv["created_by"]), content=text, message_type="text",
                client_msg_id=None, created_at=utcnow())
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(writers):
            nursery.start_soon(writer, k)
    return latencies, time.perf_counter() - t0


def burst_row(label: str, latencies: Sequence[float], wall: float) -> str:
    p50, p99, worst = ms_summary(latencies)
    return (f"| {label} | {len(latencies)} | {len(latencies) / wall:.0f} | {p50:.2f} | "
            f"{p99:.2f} | {worst:.1f} |")


async def load_postgres(db: Database, messages: int, words: list[str], searcher_in: int) -> None:
    await run_script(db, SETUP.replace("SEARCHER_LIMIT", str(searcher_in)))
    step = 100_000
    for start in range(1, messages + 1, step):
        def op(s: int = start) -> Op[None]:
            yield exec_(LOAD, words, CONVERSATIONS, s, min(messages, s + step - 1))

        await db.run(op())
    await run_script(db, FINISH)


async def load_sqlite(db: Database, messages: int, words: list[str], searcher_in: int) -> None:
    """The same shape as load_postgres, rows made in Python (no generate_series here)."""
    rng = random.Random(15)
    at = datetime(2025, 11, 30, tzinfo=UTC)
    base = datetime(2025, 12, 1, tzinfo=UTC)

    def op() -> Op[None]:
        yield script("CREATE TABLE bench_users (n integer, id uuid);\n"
                     "CREATE TABLE bench_conversations (n integer, id uuid, created_by uuid);")
        users = [new_id() for _ in range(USERS)]
        for i, u in enumerate(users, 1):
            yield exec_(INSERT_USER, u, f"bench{i}", f"bench{i}@example.com", f"Bench {i}",
                        "x", at)
            yield exec_("INSERT INTO bench_users VALUES ($1, $2)", i, u)
        convs = []
        for i in range(1, CONVERSATIONS + 1):
            cid, owner = new_id(), users[(i * 7) % USERS]
            yield exec_(INSERT_CONVERSATION, cid, "group", f"g{i}", owner, at, None)
            yield exec_("INSERT INTO bench_conversations VALUES ($1, $2, $3)", i, cid, owner)
            members = {users[(i * 13 + k * 101) % USERS] for k in (1, 2, 3)} - {owner}
            if i <= searcher_in:
                members.add(users[0])
            yield exec_(INSERT_MEMBER, cid, owner, "admin", at)
            for m in members - {owner}:
                yield exec_(INSERT_MEMBER, cid, m, "member", at)
            convs.append((cid, owner))
        for g in range(1, messages + 1):
            cid, owner = convs[(g - 1) % CONVERSATIONS]
            yield exec_(INSERT_MESSAGE, new_id(), cid, (g - 1) // CONVERSATIONS + 1, owner,
                        content(rng, words), "text", None, base + timedelta(seconds=31 * g))
        yield script(FINISH)

    await db.run(op())


async def migrate_before_search(db: Database) -> None:
    every = migrations.migration_files

    def before_009(dialect: str) -> list[Path]:
        return [p for p in every(dialect) if p.name < "009"]

    migrations.migration_files = before_009
    try:
        await migrations.migrate(db)
    finally:
        migrations.migration_files = every


class Report(list[str]):
    """Lines of Markdown, printed as they come (a long run that fails keeps its numbers)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)

    def __iadd__(self, lines: Iterable[str]) -> Report:  # type: ignore[override,misc]
        for line in lines:
            self.append(line)
        return self


async def measure(db: Database, args: argparse.Namespace) -> list[str]:
    out = Report()
    pg = db.dialect == "postgres"
    words = vocabulary(random.Random(14))
    await migrate_before_search(db)
    load_s = await timed(lambda: (load_postgres if pg else load_sqlite)(
        db, args.messages, words, args.searcher_conversations))
    convs = await fetch(db, "SELECT id, created_by FROM bench_conversations")
    store = SqlStore(db)
    out.append(f"Loaded {args.messages:,} messages in {load_s:.0f} s.\n")
    out += ["| insert burst | inserts | per s | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|"]
    lat, wall = await burst(store, convs, words, total=args.burst, writers=args.writers, seed=1)
    out.append(burst_row("without search (before 009)", lat, wall))

    migrate_s = await timed(lambda: migrations.migrate(db))
    await run_script(db, "ANALYZE messages;")
    lat, wall = await burst(store, convs, words, total=args.burst, writers=args.writers, seed=2)
    out.append(burst_row("with search, GIN fastupdate off (as migrated)" if pg
                         else "with search (FTS5 triggers)", lat, wall))
    if pg:
        await run_script(db, "ALTER INDEX messages_search_idx SET (fastupdate = on);")
        lat, wall = await burst(store, convs, words, total=args.stall_burst,
                                writers=args.writers, seed=3)
        out.append(burst_row("with search, GIN fastupdate on (4 MB pending list)", lat, wall))
        await run_script(db, "ALTER INDEX messages_search_idx SET (fastupdate = off);")
        await run_script(db, "VACUUM messages", atomic=False)  # flushes the pending list
        sizes = (await fetch(db, """SELECT pg_size_pretty(pg_table_size('messages')) AS t,
            pg_size_pretty(pg_relation_size('messages_search_idx')) AS i"""))[0]
        sized = f"table now {sizes['t']}, GIN index {sizes['i']}"
    else:
        size = (await fetch(db, "SELECT page_count * page_size AS n FROM pragma_page_count(), "
                                "pragma_page_size()"))[0]["n"]
        sized = f"database now {size / 2**20:.0f} MiB"
    out.append(f"\nMigration 009 on {args.messages:,} messages: {migrate_s:.0f} s ({sized}).\n")

    searcher = str((await fetch(db, "SELECT id FROM bench_users WHERE n = 1"))[0]["id"])
    one = str((await fetch(db, "SELECT id FROM bench_conversations WHERE n = 1"))[0]["id"])
    scope = (await fetch(db, """SELECT count(*) AS n FROM messages WHERE conversation_id IN
        (SELECT conversation_id FROM conversation_members WHERE user_id = $1)""",
                         searcher))[0]["n"]
    member_of = (await fetch(db, "SELECT count(*) AS n FROM conversation_members "
                             "WHERE user_id = $1", searcher))[0]["n"]
    out.append(f"Searches by a user in {member_of} conversations "
               f"({scope:,} messages), `limit` 20 (21 fetched), {args.repeat} runs each:\n")
    out += [f"| query | matches in all {args.messages:,} | p50 ms | p99 ms | "
            "one conversation p50 ms | p99 ms |",
            "|---|---|---|---|---|---|"]
    index = SqlSearchIndex(db)
    for label, q in queries(words).items():
        query = parse_query(q)
        everywhere = (await fetch(db, COUNT_PG if pg else COUNT_SQLITE,
                                  tsquery_of(query) if pg else fts5_match_of(query)))[0]["n"]
        results = []
        for narrow in (None, one):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                await index.search_messages(searcher, query, conversation_id=narrow,
                                            before=None, limit=21)
                times.append(time.perf_counter() - t0)
            results.append(ms_summary(times))
        (a50, a99, _), (b50, b99, _) = results
        out.append(f"| {label} | {everywhere:,} | {a50:.1f} | {a99:.1f} | {b50:.1f} | "
                   f"{b99:.1f} |")
    return out


COUNT_PG = """SELECT count(*) AS n FROM messages
WHERE search_vector @@ to_tsquery('chatsrv_search', $1)"""
COUNT_SQLITE = "SELECT count(*) AS n FROM messages_fts WHERE messages_fts MATCH $1"


async def on_postgres(dsn: str, args: argparse.Namespace) -> list[str]:
    async with trio_asyncio.open_loop(), open_postgres(
            dsn, pool_size=args.writers + 2, command_timeout=3600) as db:
        return await measure(db, args)


async def on_sqlite(args: argparse.Namespace) -> list[str]:
    async with open_sqlite(Path(args.sqlite_dir) / "bench.db", op_deadline=3600) as db:
        return await measure(db, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--burst", type=int, default=4000)
    parser.add_argument("--stall-burst", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--searcher-conversations", type=int, default=SEARCHER_CONVERSATIONS,
                        help="conversations the searching user is added to (of 5,000)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    args = parser.parse_args()
    started = datetime.now(UTC)
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="chatsrv-search-bench-") as folder:
            args.sqlite_dir = folder
            print(f"<!-- {Path(__file__).name} sqlite {started:%Y-%m-%d %H:%M} UTC -->")
            trio.run(on_sqlite, args)
        return
    name = f"chatsrv_search_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    print(f"<!-- {Path(__file__).name} postgres {started:%Y-%m-%d %H:%M} UTC -->")
    try:
        trio.run(on_postgres, f"{args.dsn.rpartition('/')[0]}/{name}", args)
    finally:
        if not args.keep:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
