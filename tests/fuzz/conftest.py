"""Fixtures of the fuzz tests: one real node per backend for the whole session.

Nodes are shared by every fuzz module (a start costs ~1 s, a PostgreSQL one more); a test
that kills its node gets it restarted for the next test by `node`'s set-up, and fails itself
through `Node.assert_healthy`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.node import Node


class NodePool:
    def __init__(self, base: Path) -> None:
        self._base = base
        self._nodes: dict[str, Node] = {}

    def get(self, backend: str, database_url: str | None) -> Node:
        node = self._nodes.get(backend)
        if node is None:
            node = self._nodes[backend] = Node(backend, self._base / backend, database_url)
        node.ensure_running()
        return node

    def stop(self, backend: str) -> None:
        node = self._nodes.pop(backend, None)
        if node is not None:
            node.stop()

    def stop_all(self) -> None:
        for backend in list(self._nodes):
            self.stop(backend)


@pytest.fixture(scope="session")
def node_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodePool]:
    pool = NodePool(tmp_path_factory.mktemp("fuzz-nodes"))
    try:
        yield pool
    finally:
        pool.stop_all()


def _watched(request: pytest.FixtureRequest, node: Node) -> Node:
    request.node.fuzz_watch = (node, node.mark())
    return node


@pytest.fixture(scope="session")
def pg_node_dsn(pg_database: str, node_pool: NodePool) -> Iterator[str]:
    """The fresh database of the PostgreSQL node; its node stops before it is dropped."""
    try:
        yield pg_database
    finally:
        node_pool.stop("postgres")


@pytest.fixture
def node(backend: str, node_pool: NodePool, request: pytest.FixtureRequest) -> Node:
    """A running node on `backend` (both backends: the fixture is parametrized)."""
    dsn = request.getfixturevalue("pg_node_dsn") if backend == "postgres" else None
    return _watched(request, node_pool.get(backend, dsn))


@pytest.fixture
def sqlite_node(node_pool: NodePool, request: pytest.FixtureRequest) -> Node:
    """A running SQLite node, for what happens before storage is involved (framing, HTTP)."""
    return _watched(request, node_pool.get("sqlite", None))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed fuzz test reports what its node logged meanwhile: each traceback's exception
    and innermost frames, and whether the node is still running (the fix list for the
    server, straight from the server)."""
    report = yield
    watch = getattr(item, "fuzz_watch", None)
    if watch is not None and report.when == "call" and report.failed:
        node, mark = watch
        found = node.tracebacks_since(mark, frames=3)
        status = "running" if node.alive else f"EXITED ({node.proc.returncode if node.proc else '?'})"
        lines = [f"{node.backend} node {status}; {len(found)} traceback(s) logged"]
        lines += [f"  {t}" for t in dict.fromkeys(found)]
        report.sections.append(("node log", "\n".join(lines)))
    return report
