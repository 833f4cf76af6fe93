"""Processes for fault runs: a private PostgreSQL cluster, a private Redis and chatsrv nodes,
each a child process in a session of its own that can be stopped, restarted or killed.

Used by tests/fault (seconds) and `python -m bench.chaos` (minutes). Nothing here touches
the machine's shared PostgreSQL (5432) or Redis (6379): every process gets a free
127.0.0.1 port and a temporary directory of its own, and a node started here gets only the
private DSN and Redis URL in its environment.

Every `open_*` context manager owns its processes: leaving the block (normally, on an error
or on cancellation) kills whatever is still running, its whole process group, and removes
its directory. Waiting for a process to start polls its readiness under a deadline (a
process gives no event to wait on); a process that exits while being waited for raises
ProcessDied with the tail of its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.server import LOAD_TEST_LIMITS

PG_BIN = Path(os.environ.get("CHATSRV_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("CHATSRV_REDIS_SERVER", "redis-server")
SHARED_PORTS = frozenset({5432, 6379})  # the machine's own services: never ours

PG_START_DEADLINE = 30.0  # postgres start-up, crash recovery included
PG_STOP_DEADLINE = 15.0  # fast shutdown (SIGINT) before SIGKILL
REDIS_START_DEADLINE = 10.0
NODE_START_DEADLINE = 60.0  # interpreter start, migrations, connect retries
NODE_STOP_DEADLINE = 15.0  # SIGTERM; the node's own SHUTDOWN_DEADLINE is 10 s
WAIT_DEADLINE = 10.0  # a killed process to be reaped
POLL = 0.05  # readiness polling interval
TAIL_LINES = 60


class ProcessDied(RuntimeError):
    """A child exited while it was expected to start or run; the message has its log tail."""


def missing_binaries(*, redis: bool = False) -> str | None:
    """Why fault runs cannot start here (a binary missing), or None."""
    missing = [str(PG_BIN / b) for b in ("initdb", "postgres", "psql", "pg_isready")
               if not (PG_BIN / b).is_file()]
    if redis and shutil.which(REDIS_SERVER) is None:
        missing.append(REDIS_SERVER)
    if os.geteuid() == 0 and not missing:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("a `postgres` user (PostgreSQL refuses to run as root)")
    return f"not installed: {', '.join(missing)}" if missing else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (never one of the shared services')."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in SHARED_PORTS:
            return port


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _as_postgres_user() -> dict[str, Any]:
    """Popen options that drop to the `postgres` user when we are root (PostgreSQL refuses
    to run as root); nothing otherwise."""
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


@dataclass
class Child:
    """One child process in its own session (so its whole group can be signalled), its
    output appended to `log`. Not started until `spawn`."""

    name: str
    log: Path
    proc: trio.Process | None = None
    starts: int = 0
    stopping: bool = False  # an exit from now on is ours (kill/stop), not a crash
    deaths: int = 0  # exits nobody asked for, seen by `watch`
    _spawned: trio.Event = field(default_factory=trio.Event)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self, argv: list[str], *, env: Mapping[str, str],
                    cwd: Path | None = None, **options: Any) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.stopping = False
        with self.log.open("ab") as out:
            out.write(f"\n=== {self.name}: start {self.starts} at {time.time():.3f}\n".encode())
            out.flush()
            # the child has its own copy of the descriptor; ours closes with the block
            self.proc = await trio.lowlevel.open_process(
                argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, **options)
        self._spawned.set()
        self._spawned = trio.Event()

    async def watch(self, on_death: Callable[[], Awaitable[None]] | None = None) -> None:
        """Never returns: whenever the process exits by itself (not by `kill`/`stop`),
        raise ProcessDied, or with `on_death` count it and await that (which may spawn it
        again). Exits we cause wait for the next spawn."""
        while True:
            proc, generation = self.proc, self.starts
            if proc is not None and proc.returncode is None:
                await proc.wait()
                if not self.stopping and self.starts == generation:
                    self.deaths += 1
                    if on_death is None:
                        self.check_alive("by itself (nobody stopped it)")
                    else:
                        await on_death()
                        continue
            while self.starts == generation:
                await self._spawned.wait()

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        if not self.running:
            return
        assert self.proc is not None
        with suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL to the whole group (a postmaster's backends too), then reap it."""
        if self.proc is None:
            return
        self.stopping = True
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # also reaches children left behind
        with trio.move_on_after(WAIT_DEADLINE, shield=True):
            await self.proc.wait()

    async def stop(self, sig: int = signal.SIGTERM, deadline: float = NODE_STOP_DEADLINE) -> None:
        """`sig` to the process, then SIGKILL to its group if it is not gone by `deadline`."""
        if self.proc is None:
            return
        self.stopping = True
        self.send_signal(sig)
        with trio.move_on_after(deadline, shield=True):
            await self.proc.wait()
        await self.kill()

    def check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise ProcessDied(f"{self.name} exited with {self.proc.returncode} {what}; "
                              f"last lines of {self.log}:\n{tail(self.log)}")


# ------------------------------------------------------------------------------- PostgreSQL


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own: initdb'd into `root`, served on 127.0.0.1:`port`,
    trust auth, fsync on (what survives a kill is what is tested). One database, `db`."""

    root: Path
    port: int
    db: str = "chatsrv"
    # more `-c name=value` settings, after (so over) the ones `start` gives
    settings: Mapping[str, str] = field(default_factory=dict)
    child: Child = field(init=False)

    def __post_init__(self) -> None:
        if self.port in SHARED_PORTS:
            raise ValueError(f"port {self.port} belongs to the machine's shared services")
        self.child = Child("postgres", self.root / "postgres.log")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.db}"

    @property
    def running(self) -> bool:
        return self.child.running

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return tail(self.child.log, lines)

    async def initdb(self) -> None:
        # --no-sync: initdb's own files are not flushed; the server runs with fsync=on, and
        # no test crashes the OS (only processes), so what matters is the server's fsync
        await _run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                    "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                   log=self.child.log, **_as_postgres_user())

    async def start(self) -> None:
        """Start the postmaster and wait until it accepts connections (after crash recovery
        if it was killed). Raises ProcessDied or trio.TooSlowError."""
        await self.child.spawn(
            [str(PG_BIN / "postgres"), "-D", str(self.data),
             "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
             "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
             "-c", "shared_buffers=16MB", "-c", "max_connections=60",
             "-c", "huge_pages=off", "-c", "logging_collector=off",
             "-c", "log_min_messages=warning",
             *(arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}"))],
            env=_base_env(), cwd=self.root, **_as_postgres_user())
        await self.wait_accepting()

    async def wait_accepting(self) -> None:
        with trio.fail_after(PG_START_DEADLINE):
            while True:  # polled: pg_isready answers 0 once connections are accepted
                self.child.check_alive("while starting")
                done = await trio.run_process(
                    [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                     "-t", "1"], check=False, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                if done.returncode == 0:
                    return
                await trio.sleep(POLL)

    async def stop(self, mode: str = "fast") -> None:
        """Shut down: "fast" (SIGINT: clients cut, checkpoint), "smart" (SIGTERM: waits for
        clients) or "immediate" (SIGQUIT: no checkpoint, crash recovery at the next start);
        SIGKILL to the group after PG_STOP_DEADLINE."""
        sig = {"fast": signal.SIGINT, "smart": signal.SIGTERM,
               "immediate": signal.SIGQUIT}[mode]
        await self.child.stop(sig, PG_STOP_DEADLINE)

    async def restart(self, mode: str = "fast") -> None:
        await self.stop(mode)
        await self.start()

    async def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (a crash)."""
        await self.child.kill()

    async def sql(self, query: str, *, db: str | None = None, deadline: float = 10.0) -> str:
        """Run one statement with psql as the superuser; its unaligned output."""
        with trio.fail_after(deadline):
            done = await trio.run_process(
                [str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                 "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-d", db or self.db, "-c", query],
                capture_stdout=True, capture_stderr=True, check=False,
                env={**_base_env(), "PGCONNECT_TIMEOUT": "3"})
        if done.returncode != 0:
            raise RuntimeError(f"psql {query!r}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    async def terminate_backends(self) -> int:
        """pg_terminate_backend every other connection to `db` (the node's pool); how many."""
        out = await self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{self.db}' AND pid <> pg_backend_pid()")
        return int(out or 0)


@asynccontextmanager
async def open_private_postgres(*, db: str = "chatsrv", settings: Mapping[str, str] | None = None
                                ) -> AsyncIterator[PrivatePostgres]:
    """initdb, start (with more `settings`), create `db`; for the block. Killed and
    removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="chatsrv-fault-pg-"))  # mode 0700
    try:
        _chown_to_postgres(root)
        pg = PrivatePostgres(root, free_port(), db=db, settings=dict(settings or {}))
        try:
            await pg.initdb()
            await pg.start()
            await pg.sql(f'CREATE DATABASE "{db}"', db="postgres")
            yield pg
        finally:
            await pg.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ Redis


@dataclass
class PrivateRedis:
    """A redis-server of our own on 127.0.0.1:`port`, keeping nothing on disk: a restart
    comes back empty, as a cache or a crashed Redis would."""

    root: Path
    port: int
    child: Child = field(init=False)

    def __post_init__(self) -> None:
        if self.port in SHARED_PORTS:
            raise ValueError(f"port {self.port} belongs to the machine's shared services")
        self.child = Child("redis", self.root / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.child.running

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return tail(self.child.log, lines)

    async def start(self) -> None:
        await self.child.spawn(
            [shutil.which(REDIS_SERVER) or REDIS_SERVER, "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--daemonize", "no"],
            env=_base_env(), cwd=self.root)
        with trio.fail_after(REDIS_START_DEADLINE):
            while not await self._pong():  # polled: no event for "accepting"
                self.child.check_alive("while starting")
                await trio.sleep(POLL)

    async def _pong(self) -> bool:
        try:
            with trio.fail_after(1):
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                async with stream:
                    await stream.send_all(b"PING\r\n")
                    return (await stream.receive_some(64)).startswith(b"+PONG")
        except (OSError, trio.TooSlowError, trio.BrokenResourceError):
            return False

    async def stop(self) -> None:
        await self.child.stop(signal.SIGTERM, REDIS_START_DEADLINE)

    async def kill(self) -> None:
        await self.child.kill()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@asynccontextmanager
async def open_private_redis() -> AsyncIterator[PrivateRedis]:
    root = Path(tempfile.mkdtemp(prefix="chatsrv-fault-redis-"))
    try:
        r = PrivateRedis(root, free_port())
        try:
            await r.start()
            yield r
        finally:
            await r.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ nodes


JWT_SECRET = "fault-run-secret-" + "k" * 40  # >= 32 bytes; these servers live for one run


def node_env(*, database_url: str, data_dir: Path, http_port: int,
             redis_url: str | None = None, node_id: str = "node-1", grpc_port: int | None = None,
             redis_prefix: str = "chatsrv-fault", extra: Mapping[str, str] | None = None,
             ) -> dict[str, str]:
    """The environment of a node for fault runs: the private database (and Redis), cheap
    registrations, no frame rate limit, a short DB_TIMEOUT (3 s: a stalled store answers
    `unavailable` well inside a client's patience) and, in a cluster, short heartbeats
    (a dead node is noticed within ~3 s). Inherited chatsrv variables are dropped, so the
    shared services can never be reached by accident."""
    env = {k: v for k, v in _base_env().items()}
    env.update({
        "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET,
        "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(http_port),
        "CHATSRV_DATA_DIR": str(data_dir), "BCRYPT_ROUNDS": "4", **LOAD_TEST_LIMITS,
        "DB_TIMEOUT": "3", "CONNECT_RETRY_DEADLINE": "30", "PRESENCE_GRACE": "0.2",
        "NODE_ID": node_id, "LOG_LEVEL": "INFO",
    })
    if redis_url is not None:
        env.update({
            "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(grpc_port if grpc_port is not None else free_port()),
            "NODE_HEARTBEAT_INTERVAL": "0.3", "NODE_TTL": "3",
        })
    env.update(extra or {})
    return env


@dataclass
class Node:
    """`python -m chatsrv serve` as a child process on a fixed port (kept across restarts,
    so clients reconnect to the same address). `source`: a source tree to run chatsrv from
    instead of the installed one."""

    name: str
    env: dict[str, str]
    root: Path
    source: Path | None = None
    child: Child = field(init=False)

    def __post_init__(self) -> None:
        self.child = Child(self.name, self.root / f"{self.name}.log")

    @property
    def port(self) -> int:
        return int(self.env["HTTP_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.child.running

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return tail(self.child.log, lines)

    async def spawn(self) -> None:
        env = dict(self.env)
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        await self.child.spawn([sys.executable, "-m", "chatsrv", "serve"], env=env,
                               cwd=self.source or self.root)

    async def wait_ready(self, deadline: float = NODE_START_DEADLINE) -> None:
        """Until GET /readyz answers 200. Raises ProcessDied or trio.TooSlowError."""
        with trio.fail_after(deadline):
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
                while True:  # polled: the process gives no event for "serving"
                    self.child.check_alive("while starting")
                    with suppress(httpx.HTTPError):
                        if (await http.get("/readyz")).status_code == 200:
                            return
                    await trio.sleep(POLL)

    async def start(self) -> None:
        await self.spawn()
        await self.wait_ready()

    async def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to clients, Redis or peers."""
        await self.child.kill()

    async def stop(self) -> None:
        await self.child.stop(signal.SIGTERM, NODE_STOP_DEADLINE)

    def check_alive(self) -> None:
        """ProcessDied (with the log tail) if the node exited by itself."""
        self.child.check_alive("by itself (nobody stopped it)")


@asynccontextmanager
async def open_nodes(root: Path) -> AsyncIterator[list[Node]]:
    """A list to add nodes to (`add_node`); every node in it is killed when the block ends."""
    nodes: list[Node] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.kill()


def add_node(nodes: list[Node], root: Path, name: str, *, pg: PrivatePostgres,
             redis: PrivateRedis | None = None, source: Path | None = None,
             extra: Mapping[str, str] | None = None) -> Node:
    """A node (not started) on the private PostgreSQL (and Redis), with a free HTTP port
    and gRPC port of its own, kept across restarts."""
    data_dir = root / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = node_env(database_url=pg.dsn, data_dir=data_dir, http_port=free_port(),
                   redis_url=redis.url if redis else None, node_id=name, extra=extra)
    node = Node(name, env, root, source=source)
    nodes.append(node)
    return node


# ------------------------------------------------------------------------------------ misc


def _base_env() -> dict[str, str]:
    """The inherited environment minus anything that names a database, Redis or chatsrv
    setting: fault processes get only what is set for them."""
    drop = ("DATABASE_URL", "DB_", "REDIS_", "PG", "CHATSRV_", "NODE_", "GRPC_", "HTTP_",
            "JWT_", "RATE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.setdefault("LANG", "C.UTF-8")
    return env


async def _run(argv: list[str], *, log: Path, **options: Any) -> None:
    """Run a set-up command to completion, its output appended to `log`."""
    with log.open("ab") as out:
        done = await trio.run_process(argv, check=False, stdout=out, stderr=subprocess.STDOUT,
                                      env=_base_env(), **options)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {done.returncode}:\n{tail(log)}")
