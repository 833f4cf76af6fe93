"""The command line, as a user runs it (subprocesses, SQLite in a temp data dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def chatsrv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatsrv", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", ["serve", "migrate", "create-user", "check-config"])
def test_every_command_has_help(command: str) -> None:
    r = chatsrv(command, "--help")
    assert r.returncode == 0 and "usage" in r.stdout


def test_migrate_create_user_and_check_config(tmp_path: Path) -> None:
    env = {"CHATSRV_DATA_DIR": str(tmp_path), "BCRYPT_ROUNDS": "4"}
    r = chatsrv("migrate", env=env)
    assert r.returncode == 0 and "001_init" in r.stdout
    assert "up to date" in chatsrv("migrate", env=env).stdout
    r = chatsrv("create-user", "cli_user", "cli@example.com", "password123", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["username"] == "cli_user"
    r = chatsrv("create-user", "cli_user", "cli2@example.com", "password123", env=env)
    assert r.returncode == 1 and "taken" in r.stderr
    shown = json.loads(chatsrv("check-config", env=env).stdout)
    assert shown["storage"].startswith("sqlite:") and shown["jwt_secret"] == "***"
    secret = (tmp_path / "jwt_secret").read_text()
    assert secret not in json.dumps(shown)


def test_unsafe_production_config_is_refused() -> None:
    r = chatsrv("check-config", env={"DATABASE_URL": "postgresql://u@h/db",
                                     "JWT_SECRET": "change-in-production"})
    assert r.returncode == 2 and "JWT_SECRET" in r.stderr


def test_serve_answers_then_stops_promptly_on_sigterm(tmp_path: Path) -> None:
    import re
    import signal
    import time
    import urllib.request

    env = {**os.environ, "CHATSRV_DATA_DIR": str(tmp_path), "HTTP_PORT": "0",
           "SHUTDOWN_DEADLINE": "10", "BCRYPT_ROUNDS": "4"}
    proc = subprocess.Popen([sys.executable, "-m", "chatsrv", "serve"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"serving on (http://[\d.]+:\d+)", line)
            if found:
                url = found.group(1)
        assert url, "server did not report its address"
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
        body = json.dumps({"username": "sig_user", "email": "sig@example.com",
                           "password": "password123"}).encode()
        req = urllib.request.Request(f"{url}/api/auth/register", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token = json.loads(r.read())["token"]
        # a WebSocket that was open recently must not hold the shutdown up
        import socket

        host, port = url.removeprefix("http://").split(":")
        ws = socket.create_connection((host, int(port)), timeout=5)
        ws.sendall((f"GET /api/ws?token={token} HTTP/1.1\r\nHost: x\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        assert b"101" in ws.recv(4096).split(b"\r\n", 1)[0]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        ws.close()
    finally:
        if proc.poll() is None:
            proc.kill()


STRONG_SECRET = "cli-test-secret-" + "x" * 40


def one_line_error(r: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    """The command failed with `status` and said why in one `error:` line, no traceback."""
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        r = chatsrv("serve", "--port", str(port), env={"CHATSRV_DATA_DIR": str(tmp_path)})
    finally:
        taken.close()
    one_line_error(r, 1, f"127.0.0.1:{port}", "in use")


def test_unreachable_and_refusing_databases_are_one_line(tmp_path: Path,
                                                        pg_database: str) -> None:
    import time

    env = {"CHATSRV_DATA_DIR": str(tmp_path), "JWT_SECRET": STRONG_SECRET,
           "CONNECT_RETRY_DEADLINE": "1"}
    # nothing listens there: retried for CONNECT_RETRY_DEADLINE, one log line per attempt
    r = chatsrv("migrate", env={**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    one_line_error(r, 1, "127.0.0.1:1", "refused")
    assert r.stderr.count("retrying in") >= 1
    # permanent mistakes fail at once, even with a long retry deadline
    pg = os.environ.get("CHATSRV_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    unknown = pg.rpartition("/")[0] + "/chatsrv_no_such_database"
    began = time.monotonic()
    r = chatsrv("migrate", env={**env, "DATABASE_URL": unknown, "CONNECT_RETRY_DEADLINE": "60"})
    one_line_error(r, 1, "chatsrv_no_such_database", "does not exist")
    assert time.monotonic() - began < 20
    r = chatsrv("migrate", env={**env, "DATABASE_URL": "mysql://root@127.0.0.1/chat"})
    one_line_error(r, 2, "DATABASE_URL", "postgresql://")
    r = chatsrv("serve", env={**env, "REDIS_URL": "redis://127.0.0.1:1/0",
                              "DATABASE_URL": pg_database, "HTTP_PORT": "0",
                              "GRPC_PORT": "0"})
    one_line_error(r, 1, "Redis at 127.0.0.1:1")


def test_account_mistakes_are_one_line_and_debug_adds_the_traceback(tmp_path: Path) -> None:
    env = {"CHATSRV_DATA_DIR": str(tmp_path), "BCRYPT_ROUNDS": "4"}
    r = chatsrv("create-user", "shorty", "shorty@example.com", "short", env=env)
    one_line_error(r, 1, "password")
    r = chatsrv("--debug", "create-user", "shorty", "shorty@example.com", "short", env=env)
    assert r.returncode == 1 and "Traceback" in r.stderr and "error: " in r.stderr
