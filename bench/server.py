"""The server under test: started here as a child process (SQLite or a fresh PostgreSQL
database), or an already running one given by --target (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

READY_DEADLINE = 60.0  # migrations on a fresh database plus start-up
STOP_DEADLINE = 20.0  # SIGTERM -> exit; the server's own shutdown deadline is 10 s

# Abuse limits a load test must raise: every client of a bench (or a test) comes from one
# address, registers thousands of users and opens many sockets per user.
LOAD_TEST_LIMITS = {
    "RATE_PER_SECOND": "100000",
    "RATE_BURST": "100000",
    "REGISTRATIONS_PER_MINUTE": "1000000",
    "LOGIN_FAILURES_PER_MINUTE": "1000000",
    "REFRESHES_PER_MINUTE": "1000000",
    "ADDRESS_RATE_PER_SECOND": "1000000",
    "ADDRESS_RATE_BURST": "1000000",
    "REST_RATE_PER_SECOND": "1000000",
    "REST_RATE_BURST": "1000000",
    "EXPENSIVE_PER_MINUTE": "1000000",
    "MAX_SOCKETS_PER_USER": "100000",
    "MAX_SOCKETS_PER_ADDRESS": "100000",
    "MAX_SOCKETS": "100000",
    "BCRYPT_QUEUE": "100000",
}
# Knobs the bench always sets on a server it starts: cheap registrations (thousands of users
# are set up per run) and limits that never throttle the load.
BASE_ENV = {"BCRYPT_ROUNDS": "4", **LOAD_TEST_LIMITS}


class TargetError(Exception):
    """The server could not be started or reached; the message says why."""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """One node behind the bench's own round-robin (cluster mode, bench/cluster.py)."""

    name: str
    host: str
    port: int
    pid: int | None


@dataclass(frozen=True, slots=True)
class ServerInfo:
    backend: str  # "sqlite" | "postgres" | "target"
    base_url: str  # http://127.0.0.1:PORT
    host: str
    port: int
    pid: int | None  # measured through /proc when known
    env: dict[str, str]  # the knobs it was started with (secrets left out)
    database: str | None = None  # PostgreSQL database name, to measure its backends
    # cluster mode: every node, clients spread over them (base_url/pid: the first one);
    # empty for the one server above
    nodes: tuple[NodeRef, ...] = ()


def check_local(url: str) -> tuple[str, int]:
    """(host, port) of a http:// URL on this machine's loopback; TargetError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise TargetError(f"--target must look like http://127.0.0.1:PORT, got {url!r}")
    host = parts.hostname
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise TargetError(f"only a server on 127.0.0.1 may be targeted, not {parts.hostname!r}")
    return host, parts.port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    """Poll GET /readyz until 200; TargetError if the process exits or the deadline passes."""
    deadline = time.monotonic() + READY_DEADLINE
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log else ""
                raise TargetError(f"server exited with {proc.returncode} while starting:\n{tail}")
            with suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
    raise TargetError(f"{base_url}/readyz did not answer 200 within {READY_DEADLINE:.0f}s")


def _pg_admin(dsn: str, sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@contextmanager
def postgres_database(admin_dsn: str) -> Iterator[str]:
    """A fresh database for one run, dropped afterwards. Yields its DSN."""
    name = f"chatsrv_bench_{uuid.uuid4().hex[:12]}"
    try:
        _pg_admin(admin_dsn, f'CREATE DATABASE "{name}"')
    except Exception as exc:  # asyncpg / OS errors: say what and where, then stop
        raise TargetError(f"cannot create a PostgreSQL database via {admin_dsn}: {exc!r}") from exc
    base, _, _ = admin_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with suppress(Exception):
            _pg_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def started_server(backend: str, out_dir: Path, *, pg_admin_dsn: str,
                   extra_env: dict[str, str], source: Path | None = None
                   ) -> Iterator[ServerInfo]:
    """Start `python -m chatsrv serve` on a free loopback port with a fresh data dir (and a
    fresh PostgreSQL database for backend="postgres"); stop it (SIGTERM, then SIGKILL after
    STOP_DEADLINE) and drop what was made when the block ends. Its log goes to
    out_dir/server-<backend>.log. `source` is a source tree to run chatsrv from instead of
    the installed one (it becomes the server's working directory, first on sys.path)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chatsrv-bench-") as data_dir, \
            _maybe_postgres(backend, pg_admin_dsn) as dsn:
        knobs = {**BASE_ENV, **extra_env}
        env = {**os.environ, **knobs, "CHATSRV_DATA_DIR": data_dir, "HTTP_HOST": "127.0.0.1",
               "HTTP_PORT": str(port)}
        for var in ("DATABASE_URL", "DB_HOST", "REDIS_URL", "REDIS_HOST"):
            env.pop(var, None)
        if dsn:
            env["DATABASE_URL"] = dsn
            env["JWT_SECRET"] = secrets.token_urlsafe(36)  # 48 characters
        log_path = out_dir / f"server-{backend}.log"
        with open(log_path, "wb") as log:
            # own session: a Ctrl-C on the bench reaches the server only through us
            proc = subprocess.Popen([sys.executable, "-m", "chatsrv", "serve"], env=env,
                                    cwd=source, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                base_url = f"http://127.0.0.1:{port}"
                wait_ready(base_url, proc, log_path)
                yield ServerInfo(backend=backend, base_url=base_url, host="127.0.0.1",
                                 port=port, pid=proc.pid, env=knobs,
                                 database=dsn.rsplit("/", 1)[1] if dsn else None)
            finally:
                stop_process(proc)


@contextmanager
def _maybe_postgres(backend: str, admin_dsn: str) -> Iterator[str | None]:
    if backend != "postgres":
        yield None
        return
    with postgres_database(admin_dsn) as dsn:
        yield dsn


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after STOP_DEADLINE (the server's own deadline is 10 s)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def target_server(url: str, pid: int | None) -> ServerInfo:
    host, port = check_local(url)
    base_url = f"http://{host}:{port}"
    wait_ready(base_url, None, None)
    return ServerInfo(backend="target", base_url=base_url, host=host, port=port, pid=pid,
                      env={})
