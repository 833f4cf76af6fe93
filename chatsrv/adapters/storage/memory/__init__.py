"""In-memory storage: the Store and CallLog ports on plain dicts, no I/O.

A real implementation of the ports, held to the same contract suite as SQLite and
PostgreSQL (tests/contract/), so that service tests run the rules without sockets or a
database. Nothing survives the process.

Transaction-free but atomic. Every public method is an `_atomic` body: one checkpoint
first (the only place the call can be cancelled, before it has touched anything), then the
body runs synchronously to its end. Under Trio's cooperative scheduling no other task runs
in between, so each method is atomic and isolated like one SQL transaction: of concurrent
uses of one refresh token exactly one wins, two sides creating the same direct conversation
get one, a group commit numbers its seqs gap-free. A body checks everything it will refuse
before its first write, so a refused call changes nothing. What it returns is frozen
entities and fresh containers, never the tables themselves.

Same results and errors as the SQL store, including what its schema enforces:
  - usernames and emails unique case-insensitively (Conflict `username_taken` /
    `email_taken`, username first, as PostgreSQL checks its indexes);
  - foreign keys: members, creators, senders, sessions, refresh tokens and calls must name
    users (and conversations) that exist, else Invalid; the calls table's CHECKs (id of 1-64
    characters, media audio or video) too;
  - values PostgreSQL refuses are Invalid here as well (where SQLite is more lenient, this
    store follows PostgreSQL, the production backend, so a service test fails where
    production would): text with NUL or lone surrogates, integers outside 64 bits, a
    negative LIMIT or OFFSET, ids of uuid columns that are not UUIDs (canonicalised, as
    PostgreSQL compares uuid values, not spellings); timestamps are normalised to UTC;
  - a unique violation the SQL store lets through as its internal UniqueViolation (a
    duplicate session id, refresh-token hash, conversation id or message id) is Conflict
    here, as the port says.
Case folding is Python's `str.lower()` (PostgreSQL's lower() on our C.UTF-8 databases folds
the same letters but a few special ones; SQLite's folds ASCII only). Where the SQL leaves
the order open, member_ids come in join order and contacts, get_users, live_sessions and
ties in insertion order.

Test aid: `fail_next(method, error)` makes the next call of a method raise, before it
changes anything or (`committed=True`) after its changes are made, as when the reply to a
COMMIT is lost.

One module per aggregate, with the SQL adapters' stems: store.py (users, conversations;
MemoryStore, with messages.py and sessions.py mixed in), calls.py, blocks.py, uploads.py;
base.py (the atomic call, the fault hook, values) and rows.py (the tables) under them all.
"""

from chatsrv.adapters.storage.memory.blocks import MemoryBlocks
from chatsrv.adapters.storage.memory.calls import MemoryCallLog
from chatsrv.adapters.storage.memory.store import MemoryStore
from chatsrv.adapters.storage.memory.uploads import MemoryUploadStore

__all__ = ["MemoryBlocks", "MemoryCallLog", "MemoryStore", "MemoryUploadStore"]
