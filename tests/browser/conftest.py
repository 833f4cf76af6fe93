"""Browser tests: the web client (chatsrv/web) in Debian's Chromium, driven by Playwright.

The server is a real `python -m chatsrv serve` subprocess on SQLite in the test's tmp dir,
on a port the kernel picks at the first start and reused on a restart. A subprocess, not
the in-process `server` fixture: a restart is then what an operator does (SIGTERM, the
process and every socket gone, a new process on the same port and data), the browser can
only notice it through its sockets, and Playwright's sync API runs on the test's own thread
with no Trio or asyncio loop around it.

Chromium is /usr/bin/chromium (apt package `chromium`, installed by .ci/services): no
browser download at run time. Without it, or without the `playwright` package, the tests
skip loudly outside CI and fail under CI=true (as `_unreachable` in tests/conftest.py).

Every step's screenshot goes to <tmp_path>/shots; when a test fails, each page's console
log and a last screenshot are added to the report.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMIUM = os.environ.get("CHATSRV_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # the machine's network is closed: without these Chromium's own traffic is refused
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # a camera and a microphone that exist (test patterns), and no permission prompt
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    # WebRTC host candidates on loopback too, for machines without another interface
    "--allow-loopback-in-peer-connection",
    # the tests hand the page its CSP header through Playwright's router (ui.CSP); Chromium
    # then takes the document for a public one and blocks its WebSocket to 127.0.0.1
    "--disable-features=LocalNetworkAccessChecks",
]
REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT = 30.0


def _missing(what: str, why: str) -> None:
    message = f"{what} missing ({why})"
    if IN_CI:
        pytest.fail(f"{message}: CI must run the browser tests", pytrace=False)
    pytest.skip(f"!!! SKIPPED: {message}; `apt-get install -y chromium` (or run .ci/services) "
                "and `pip install -e '.[test]'` to run these tests")


class ChatServer:
    """`python -m chatsrv serve` with its data in `data_dir`; restartable on the same port."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "DB_HOST", "REDIS_URL", "REDIS_HOST")}
        env.update({
            "CHATSRV_DATA_DIR": str(self.data_dir), "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port), "JWT_SECRET": "browser-test-secret-" + "x" * 32,
            "BCRYPT_ROUNDS": "4", "PRESENCE_GRACE": "0.2", "TYPING_TTL": "4",
            "SHUTDOWN_DEADLINE": "5", "RING_TIMEOUT": "30",
            "STUN_URLS": "",  # no STUN server to reach here: host candidates only
            # generous limits for the abuse limits of DESIGN §7 (ignored until they exist)
            "REGISTRATIONS_PER_MINUTE": "1000", "LOGIN_FAILURES_PER_MINUTE": "1000",
            "REST_RATE_PER_SECOND": "1000", "REST_RATE_BURST": "1000",
            # offline push (test_notifications.py): the local push service speaks http,
            # and a push goes out soon after its message
            "PUSH_ALLOW_INSECURE": "true", "PUSH_DELAY": "0.3", "PUSH_POLL_INTERVAL": "0.1",
            "PUSH_RETRY_DELAY": "0.05", "PUSH_RETRY_MAX_DELAY": "0.2",
            # sync_result in pages of 2 messages and 2 changes: the client's pager is used
            "SYNC_PAGE_SIZE": "2",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatsrv", "serve"], cwd=REPO, env=self.env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        started = threading.Event()
        found: dict[str, str] = {}
        proc = self.proc

        def read() -> None:  # copy the log to a file; never let the pipe fill up
            assert proc.stdout is not None
            with self.log_path.open("a") as log:
                log.write(f"---- start (pid {proc.pid}) ----\n")
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    hit = re.search(r"serving on (http://127\.0\.0\.1:(\d+))", line)
                    if hit and not started.is_set():
                        found["url"] = hit.group(1)
                        started.set()
            started.set()  # the process ended

        self._reader = threading.Thread(target=read, daemon=True, name="chatsrv-log")
        self._reader.start()
        if not started.wait(SERVER_START_TIMEOUT) or "url" not in found:
            self.kill()
            raise RuntimeError(f"chatsrv did not start; its log:\n{self.log()}")
        self.url = found["url"]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it; SIGKILL if it outlives its shutdown deadline."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[ChatServer]:
    data = tmp_path / "data"
    data.mkdir()
    srv = ChatServer(data, tmp_path / "chatsrv.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        _missing("Chromium", f"no {CHROMIUM}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        _missing("Playwright", repr(exc))
    expect.set_options(timeout=10_000)
    # tests/conftest.py imports trio_asyncio, whose event loop policy hands out trio-asyncio
    # loops, on which Playwright's sync API cannot run: a plain asyncio policy for this
    # thread while the browser tests run (trio_asyncio honours a per-thread policy outside
    # Trio), its own again afterwards.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                yield b
            finally:
                b.close()
    finally:
        asyncio.set_event_loop_policy(None)


@pytest.fixture
def people(browser: Any, chat_server: ChatServer, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[Any]:
    from tests.browser.ui import People

    crowd = People(browser, chat_server, tmp_path / "shots")
    request.node.browser_people = crowd
    try:
        yield crowd
    finally:
        errors = crowd.page_errors()
        crowd.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure: a screenshot of every page, and their console logs, in the report."""
    report = yield
    crowd = getattr(item, "browser_people", None)
    if crowd is not None and report.failed and report.when in ("setup", "call"):
        for section in crowd.failure_sections():
            report.sections.append(section)
    return report
