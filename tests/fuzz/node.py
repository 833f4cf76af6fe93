"""A real node for the fuzz tests: `python -m chatsrv serve` in a subprocess, and sync clients.

A subprocess, not an in-process server, because what these tests look for includes the node
dying (an exception escaping `serve`) and a client that hangs: both must be seen from outside,
with the node's own log as the witness. Every wait here has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.server import LOAD_TEST_LIMITS, stop_process
from tests.helpers import Account

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # migrations on a fresh PostgreSQL database included
TIMEOUT = 10.0  # one request
JWT_SECRET = "fuzz-secret-" + "x" * 40

_SERVING = re.compile(r"serving on (http://[\d.]+:(\d+))")
# a log record, or a traceback printed at top level (the one that ends a process)
_BLOCK_START = re.compile(r"^(?=\d{4}-\d\d-\d\d |Traceback |  \+ Exception Group Traceback)",
                          re.MULTILINE)
_GUTTER = re.compile(r"^[ |+]*")  # exception groups indent their members with "| " and "+"
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Timeout|Group)\b")
_GROUPS = ("ExceptionGroup", "BaseExceptionGroup")


class NodeDied(AssertionError):
    pass


class Node:
    """One `chatsrv serve` process on a free port; its log goes to a file we can read.

    `start` blocks until the node reports its address (or fails with its log); `stop` sends
    SIGTERM and kills it if it does not exit within bench.server.STOP_DEADLINE. A node that died is
    restarted by `ensure_running` (same data, new port), and the death is remembered in
    `deaths` so the test that caused it can say so.
    """

    def __init__(self, backend: str, data_dir: Path, database_url: str | None = None) -> None:
        self.backend = backend
        self.data_dir = data_dir
        self.database_url = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path = data_dir / "node.log"
        self.deaths: list[str] = []

    # ------------------------------------------------------------------ lifetime

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "DB_HOST")}
        env.update({
            "HTTP_HOST": "127.0.0.1", "HTTP_PORT": "0", "CHATSRV_DATA_DIR": str(self.data_dir),
            "BCRYPT_ROUNDS": "4", **LOAD_TEST_LIMITS,
            "SHUTDOWN_DEADLINE": "5", "CONNECT_RETRY_DEADLINE": "10",
        })
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
            env["JWT_SECRET"] = JWT_SECRET
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chatsrv", "serve"], cwd=ROOT, env=self.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = _SERVING.search(self.log_since(offset))
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling a file for a line, under START_TIMEOUT
        tail = self.log_since(offset)[-3000:]
        self.stop()
        raise RuntimeError(f"{self.backend} node did not start:\n{tail}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        """Start the node if it is not running, or restart it if it stopped answering (a
        node whose serve loop died may take a moment to exit)."""
        if self.alive and self.answers():
            return
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.deaths.append(f"exit code {self.proc.returncode}")
            self.proc = None
        self.start()

    def answers(self, within: float = 2.0) -> bool:
        """/healthz answers 200 within `within` seconds."""
        deadline = time.monotonic() + within
        while self.alive:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=within).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # retrying a refused connection, under `within`
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    # ------------------------------------------------------------------ the log

    def mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def tracebacks_since(self, mark: int, *, frames: int = 0) -> list[str]:
        """Each traceback logged since `mark` (plain or exception group): its innermost
        exception line, after its last `frames` stack entries (file, line, function) when
        asked for."""
        found = []
        for block in _BLOCK_START.split(self.log_since(mark)):
            if "Traceback (most recent call last)" not in block:
                continue
            stack: list[str] = []
            exc = ""
            for line in block.splitlines():
                text = _GUTTER.sub("", line)
                if text.startswith("File "):
                    stack.append(text)
                elif _EXCEPTION.match(text) and not text.startswith(_GROUPS):
                    exc, frames_of_exc = text, list(stack)
            if not exc:
                continue
            found.append(" <- ".join([exc, *reversed(frames_of_exc[-frames:])]) if frames else exc)
        return found

    def assert_healthy(self, mark: int) -> None:
        """The node is still up and logged no traceback since `mark` (a client input that
        makes the node log a traceback is a bug: at 30 frames/s it is a log flood)."""
        if not self.alive:
            code = self.proc.returncode if self.proc else None
            raise NodeDied(f"the {self.backend} node exited (code {code}); log:\n"
                           + self.log_since(mark)[-4000:])
        if not self.answers():
            raise NodeDied(f"the {self.backend} node no longer answers /healthz")
        tracebacks = self.tracebacks_since(mark)
        assert not tracebacks, f"the node logged {len(tracebacks)} traceback(s): {tracebacks[:5]}"


# ---------------------------------------------------------------------------- REST, sync


def rest(node: Node) -> httpx.Client:
    return httpx.Client(base_url=node.url, timeout=TIMEOUT)


def register(http: httpx.Client, name: str | None = None) -> Account:
    name = name or f"f{uuid.uuid4().hex[:12]}"
    body = {"username": name, "email": f"{name}@example.com", "password": "password123",
            "display_name": name.title()}
    r = http.post("/api/auth/register", json=body)
    assert r.status_code == 201, r.text
    data = r.json()
    return Account(id=data["user"]["id"], username=name, email=body["email"],
                   password=body["password"], token=data["token"],
                   refresh_token=data["refresh_token"])


def conversation(http: httpx.Client, owner: Account, *others: Account,
                 name: str | None = None) -> str:
    if name is None and len(others) == 1:
        body: dict[str, Any] = {"type": "one_to_one", "member_ids": [others[0].id]}
    else:
        body = {"type": "group", "name": name or "group", "member_ids": [o.id for o in others]}
    r = http.post("/api/conversations", json=body, headers=owner.headers)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def send(http: httpx.Client, who: Account, conversation_id: str, content: str = "hi",
         **extra: Any) -> dict[str, Any]:
    r = http.post(f"/api/conversations/{conversation_id}/messages",
                  json={"content": content, **extra}, headers=who.headers)
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawConn:
    """One HTTP/1.1 connection driven byte by byte (keep-alive behaviour, slow heads)."""

    def __init__(self, node: Node, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((node.host, node.port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, *, within: float) -> RawResponse:
        """The next response (Content-Length framed, as Hypercorn sends them), complete
        within `within` seconds; TimeoutError past that (what was read is kept)."""
        deadline = time.monotonic() + within
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            self._fill(deadline)
            rest = self.buf.partition(b"\r\n\r\n")[2]
        self.buf = rest[length:]
        return RawResponse(int(lines[0].split()[1]), headers, rest[:length])

    def wait_eof(self, *, within: float) -> bytes:
        """Read until the server closes; everything it still sent. TimeoutError if it
        keeps the connection open past `within` seconds."""
        deadline = time.monotonic() + within
        try:
            while True:
                self._fill(deadline)
        except ConnectionError:
            data, self.buf = self.buf, b""
            return data

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("nothing (more) from the server before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("nothing (more) from the server before the deadline") from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
