"""Fault-run fixtures: a private PostgreSQL cluster (initdb in a temp dir, its own port), a
private Redis, and chatsrv nodes as processes of their own (so they can be killed).

The machine's shared PostgreSQL (5432) and Redis (6379) are never touched here. When the
PostgreSQL or Redis binaries are missing these tests skip loudly; under CI=true they fail.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.faults import (
    Node,
    PrivatePostgres,
    PrivateRedis,
    missing_binaries,
    open_nodes,
    open_private_postgres,
    open_private_redis,
)
from bench.ledger import Check, Fault, Ledger, counts, problems
from tests.conftest import IN_CI

RECOVER_BOUND = 15.0  # seconds from a fault's end until every sender is acked again


def _require(*, redis: bool) -> None:
    reason = missing_binaries(redis=redis)
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"fault runs need PostgreSQL{' and Redis' if redis else ''}: {reason}",
                    pytrace=False)
    pytest.skip(f"!!! SKIPPED: {reason}; install them to run the fault tests")


# Sync fixtures: a skip raised in an async (trio) fixture reaches pytest wrapped in an
# exception group, and its reason is lost.
@pytest.fixture
def pg_binaries() -> None:
    _require(redis=False)


@pytest.fixture
def redis_binaries() -> None:
    _require(redis=True)


@pytest.fixture
async def private_pg(pg_binaries: None) -> AsyncIterator[PrivatePostgres]:
    async with open_private_postgres() as pg:
        yield pg


@pytest.fixture
async def private_redis(redis_binaries: None) -> AsyncIterator[PrivateRedis]:
    async with open_private_redis() as redis:
        yield redis


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """Nodes added with bench.faults.add_node(nodes, tmp_path, ...) are killed at the end."""
    async with open_nodes(tmp_path) as started:
        yield started


@contextmanager
def explained(nodes: Sequence[Node], pg: PrivatePostgres | None = None,
              redis: PrivateRedis | None = None) -> Iterator[None]:
    """On any failure, add the last lines of every process's log to the exception."""
    try:
        yield
    except BaseException as exc:
        for node in nodes:
            if node.child.deaths:
                continue  # its ProcessDied carries the tail
            state = "running" if node.running else f"exited {node.child.proc and node.child.proc.returncode}"
            exc.add_note(f"--- {node.name} ({state}, {node.child.deaths} deaths), "
                         f"last lines of {node.child.log}:\n{node.log_tail(40)}")
        if pg is not None:
            exc.add_note(f"--- postgres, last lines:\n{pg.log_tail(15)}")
        if redis is not None:
            exc.add_note(f"--- redis, last lines:\n{redis.log_tail(10)}")
        raise


def assert_clean(ledger: Ledger, result: Check, nodes: Sequence[Node]) -> None:
    """Zero lost, duplicated, false acks, gaps, sync misses; only outage failures, none
    outside the faults; every fault recovered within RECOVER_BOUND; no node died."""
    print(f"fault run counts: {counts(ledger, result)}")  # shown with -rP or on failure
    found = problems(ledger, result, recover_bound=RECOVER_BOUND)
    found += [f"{n.name} died {n.child.deaths} times by itself" for n in nodes if n.child.deaths]
    tails = "\n".join(f"--- {n.name}:\n{n.log_tail(30)}" for n in nodes) if found else ""
    assert not found, f"{found}\ncounts: {counts(ledger, result)}\n{tails}"


def assert_reached(f: Fault) -> None:
    """The fault was felt: some sender saw an error or a closed socket (else the run
    proved nothing)."""
    assert sum(f.failures.values()) > 0, f"{f.name}: no sender noticed it"
    assert not math.isnan(f.all_acked)
