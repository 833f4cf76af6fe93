#!/usr/bin/env python3
"""`just deploy-check`: the compose deployment end to end, as an operator runs it.

Build (the local base image via debootstrap first, if it is missing), `up`, both nodes ready
behind HAProxy, a cross-node chat (alice pinned to chat1 and bob to chat2 by HAProxy's
sticky cookie), stop chat1, alice reconnects (HAProxy sends her to chat2) and syncs the
message bob sent meanwhile (exactly once), then `down`. Each step prints its time; any
failure exits non-zero with the containers' logs.

Python standard library only (plain-socket WebSocket client), so it needs no venv: podman,
podman-compose and python3 on the host. The stack runs as its own compose project
(`chatsrv-check`, port 18080, its own volume, removed at the end), beside any `chatsrv`
stack of the operator's.

Environment:
  BASE_IMAGE   base of the images (default localhost/debian:bookworm, made with
               deploy/make-base-image.sh if missing; debian:bookworm-slim where a registry
               is reachable)
  CA_BUNDLE    CA bundle pip must trust during the build (default: the host's
               /etc/ssl/certs/ca-certificates.crt if present; CA_BUNDLE= for none)
  CHECK_PORT   published HAProxy port of the check stack (default 18080)
  CHECK_PROJECT  compose project name (default chatsrv-check)
Options: --no-build (use the images as they are), --keep (leave the stack up).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = os.environ.get("CHECK_PROJECT", "chatsrv-check")
PORT = int(os.environ.get("CHECK_PORT", "18080"))
HOST = "127.0.0.1"
LOCAL_BASE = "localhost/debian:bookworm"
LOG = Path(os.environ.get("TMPDIR", "/tmp")) / f"{PROJECT}.log"
T0 = time.monotonic()
ICE_URL = re.compile(r"^(stun|stuns|turn|turns):[A-Za-z0-9.-]+(:[0-9]{1,5})?"
                     r"(\?transport=(udp|tcp))?$")


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.2f} s] {msg}", flush=True)


@contextmanager
def step(name: str) -> Iterator[dict[str, Any]]:
    info: dict[str, Any] = {}
    say(f"{name} ...")
    start = time.monotonic()
    try:
        yield info
    except BaseException:
        say(f"{name}: FAILED after {time.monotonic() - start:.2f} s")
        raise
    took = time.monotonic() - start
    extra = f"  ({info['note']})" if info.get("note") else ""
    say(f"{name}: ok in {took:.2f} s{extra}")


def run(*cmd: str, env: dict[str, str] | None = None, check: bool = True,
        quiet: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; its output goes to the log file (and is returned)."""
    full_env = {**os.environ, "CHATSRV_PORT": str(PORT), **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    with LOG.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n[exit {proc.returncode}]\n")
    if not quiet:
        print(proc.stdout, end="")
    if check and proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return proc


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("podman-compose", "-p", PROJECT, *args, check=check)


# ------------------------------------------------------------------ HTTP and WebSocket


def request(method: str, path: str, body: Any = None, *, token: str | None = None,
            node: str | None = None, timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    """One request on a fresh connection. `node` pins it with HAProxy's cookie."""
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    headers = {"Connection": "close"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if node:
        headers["Cookie"] = f"CHATSRV_NODE={node}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return resp.status, parsed, hdrs


def expect(status: int, want: int | tuple[int, ...], what: str, body: Any) -> None:
    wanted = want if isinstance(want, tuple) else (want,)
    if status not in wanted:
        raise CheckFailed(f"{what}: HTTP {status}, wanted {want}: {body}")


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"WebSocket closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


class WebSocket:
    """A minimal RFC 6455 client on a plain blocking socket: text frames in and out, pings
    answered, a close reported as Closed."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, path: str, *, node: str | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, PORT), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{PORT}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        if node:
            lines.append(f"Cookie: CHATSRV_NODE={node}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise CheckFailed(f"WebSocket handshake: connection closed ({self.buf[:200]!r})")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in status_line + " ":
            raise CheckFailed(f"WebSocket handshake refused: {status_line} {self.buf[:300]!r}")
        headers: dict[str, list[str]] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != [accept]:
            raise CheckFailed("WebSocket handshake: wrong Sec-WebSocket-Accept")
        self.set_cookie = headers.get("set-cookie", [])
        self.seen: list[dict[str, Any]] = []  # frames wait_for read past

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(None, "TCP closed without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, frame: dict[str, Any]) -> None:
        self._send_frame(0x1, json.dumps(frame).encode())

    def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON frame, or None when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        message = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                b1, b2 = self._read(2)
                n = b2 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._read(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._read(8))
                payload = self._read(n)
            except TimeoutError:
                return None
            opcode = b1 & 0x0F
            if opcode == 0x9:
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    self._send_frame(0x8, payload[:2])
                except OSError:
                    pass
                raise Closed(code, payload[2:].decode(errors="replace"))
            elif opcode in (0x0, 0x1):
                message += payload
                if b1 & 0x80:
                    frame: dict[str, Any] = json.loads(message)
                    return frame

    def wait_for(self, kind: str, timeout: float, match: Any = None) -> dict[str, Any]:
        """Frames until one of type `kind` (and `match(payload)`); the others are kept."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(deadline - time.monotonic())
            if frame is None:
                raise CheckFailed(f"no {kind} frame within {timeout:g} s")
            self.seen.append(frame)
            if frame.get("type") == kind and (match is None or match(frame["payload"])):
                return frame

    def close(self) -> None:
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


class Prober(threading.Thread):
    """GET /readyz pinned to one node every `interval` s, each on a fresh connection,
    until stopped: what a client whose cookie names that node sees while it goes away."""

    def __init__(self, node: str, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.node, self.interval = node, interval
        self.done = threading.Event()
        self.results: list[tuple[float, float, str]] = []  # (start, seconds, outcome)

    def run(self) -> None:
        while not self.done.is_set():
            start = time.monotonic()
            try:
                status, body, _ = request("GET", "/readyz", node=self.node, timeout=10)
                outcome = body.get("node_id", str(status)) if status == 200 else f"HTTP {status}"
            except OSError as exc:
                outcome = type(exc).__name__
            self.results.append((start, time.monotonic() - start, outcome))
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def summary(self) -> tuple[str, float, list[str]]:
        slowest = max(self.results, key=lambda r: r[1])
        bad = [f"{o} after {1000 * d:.0f} ms" for _, d, o in self.results
               if not o.startswith("node-")]
        served: dict[str, int] = {}
        for _, _, o in self.results:
            served[o] = served.get(o, 0) + 1
        text = (f"{len(self.results)} requests: " +
                ", ".join(f"{n} {o}" for o, n in served.items()) +
                f"; slowest {1000 * slowest[1]:.0f} ms ({slowest[2]})")
        return text, slowest[1], bad


def connect(token: str, node: str) -> tuple[WebSocket, dict[str, Any]]:
    ws = WebSocket(f"/api/ws?token={token}", node=node)
    ready = ws.wait_for("ready", 10)
    return ws, ready["payload"]


# ------------------------------------------------------------------ steps


def preflight() -> None:
    with step("preflight: podman, podman-compose, host settings") as info:
        for cmd in ("podman", "podman-compose", "python3"):
            if run("sh", "-c", f"command -v {cmd}", check=False).returncode != 0:
                raise CheckFailed(f"{cmd} not found (deploy/host-setup.sh installs it)")
        notes = [run("podman", "--version").stdout.strip()]
        arp_notify = Path("/proc/sys/net/ipv4/conf/all/arp_notify")
        if arp_notify.exists() and arp_notify.read_text().strip() == "0":
            notes.append("WARNING net.ipv4.conf.all.arp_notify=0: on a host without udev the "
                         "bridge MAC changes as containers join and containers keep the old "
                         "one (see deploy/host-setup.sh); checked after `up`")
        info["note"] = "; ".join(notes)


def check_gateway_neighbours() -> None:
    """Each container's ARP entry for the gateway (aardvark-dns, the published port's host
    side) must be the bridge's current MAC; a stale one blackholes its DNS for 15-45 s."""
    if os.geteuid() != 0 or run("sh", "-c", "command -v nsenter", check=False).returncode:
        say("gateway ARP entries: not checked (needs root and nsenter)")
        return
    with step("every container's ARP entry for the gateway is the bridge's MAC") as info:
        net = f"{PROJECT}_default"
        bridge = run("podman", "network", "inspect", net, "--format",
                     "{{.NetworkInterface}}").stdout.strip()
        gateway = run("podman", "network", "inspect", net, "--format",
                      "{{range .Subnets}}{{.Gateway}}{{end}}").stdout.strip()
        mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
        stale = []
        for service in ("postgres", "redis", "chat1", "chat2", "haproxy"):
            pid = run("podman", "inspect", "-f", "{{.State.Pid}}",
                      f"{PROJECT}_{service}_1").stdout.strip()
            neigh = run("nsenter", "-t", pid, "-n", "ip", "neigh", "show", gateway).stdout
            fields = neigh.split()
            if "lladdr" not in fields or fields[fields.index("lladdr") + 1] == mac:
                continue
            cached = fields[fields.index("lladdr") + 1]
            # the MAC of the container's own bridge port still reaches the host
            iflink = run("nsenter", "-t", pid, "-n", "cat", "/sys/class/net/eth0/iflink").stdout
            own = [p.parent for p in Path("/sys/class/net").glob("*/ifindex")
                   if p.read_text().strip() == iflink.strip()]
            if own and (own[0] / "address").read_text().strip() == cached:
                continue
            stale.append(f"{service} has {cached}")
        if stale:
            raise CheckFailed(f"bridge {bridge} is now {mac}, but {', '.join(stale)} for "
                              f"{gateway}: their DNS lookups fail until that entry expires "
                              "(15-45 s). Set net.ipv4.conf.all.arp_notify=1 "
                              "(deploy/host-setup.sh)")
        info["note"] = f"{bridge} {mac}"


def ensure_base_image() -> str:
    base = os.environ.get("BASE_IMAGE")
    if base:
        return base
    if run("podman", "image", "exists", LOCAL_BASE, check=False).returncode != 0:
        with step(f"base image {LOCAL_BASE} missing: deploy/make-base-image.sh (debootstrap)"):
            run("sh", "deploy/make-base-image.sh")
    return LOCAL_BASE


def build(base: str) -> None:
    ca = os.environ.get("CA_BUNDLE")
    if ca is None:
        ca = "/etc/ssl/certs/ca-certificates.crt" if Path(
            "/etc/ssl/certs/ca-certificates.crt").exists() else ""
    with step(f"build the four images (deploy/build-images.sh, BASE_IMAGE={base})") as info:
        out = run("sh", "deploy/build-images.sh", env={"BASE_IMAGE": base, "CA_BUNDLE": ca})
        sizes = [line.split()[0] + " " + " ".join(line.split()[-2:])
                 for line in out.stdout.splitlines() if line.startswith("localhost/chatsrv")]
        info["note"] = "; ".join(sizes)


def secrets() -> list[str]:
    values = []
    for name in ("chatsrv.env", "postgres.env"):
        for line in (ROOT / "deploy" / name).read_text().splitlines():
            key, _, value = line.partition("=")
            if key in ("JWT_SECRET", "POSTGRES_PASSWORD", "TURN_SECRET") and value:
                values.append(value)
    return values


def up() -> None:
    if not ((ROOT / "deploy/chatsrv.env").exists() and (ROOT / "deploy/postgres.env").exists()):
        with step("env files missing: deploy/make-env.sh"):
            run("sh", "deploy/make-env.sh")
    with step(f"leftovers of an earlier run of project {PROJECT}: down"):
        teardown(quiet=True)
    with step(f"podman-compose -p {PROJECT} up -d (HAProxy on {HOST}:{PORT})"):
        out = compose("up", "-d")
        leaked = [s for s in secrets() if s in out.stdout]
        if leaked:
            raise CheckFailed("podman-compose up printed a secret from the env files")
    with step("podman-compose ps with no variables exported"):
        compose("ps")


def wait_ready(timeout: float = 120.0) -> None:
    with step("both nodes ready behind HAProxy (GET /readyz pinned to chat1, chat2)") as info:
        deadline = time.monotonic() + timeout
        pending = {"chat1": "node-1", "chat2": "node-2"}
        last: Any = None
        while pending:
            for server, node_id in list(pending.items()):
                try:
                    status, body, _ = request("GET", "/readyz", node=server, timeout=3)
                except OSError as exc:
                    status, body = 0, repr(exc)
                last = (server, status, body)
                if status == 200 and body.get("node_id") == node_id:
                    del pending[server]
            if time.monotonic() > deadline:
                raise CheckFailed(f"not ready after {timeout:g} s: {last}")
            if pending:
                time.sleep(0.2)
        info["note"] = f"{time.monotonic() - T0:.1f} s since the check started"


def check_balance_and_ice(token: str) -> None:
    with step("cookie-less requests are spread over both nodes; ICE servers well formed") as info:
        nodes = [request("GET", "/readyz")[1]["node_id"] for _ in range(6)]
        if len(set(nodes)) < 2:
            raise CheckFailed(f"6 cookie-less requests all went to {nodes[0]}")
        status, body, _ = request("GET", "/api/ice-servers", token=token)
        expect(status, 200, "GET /api/ice-servers", body)
        urls = [u for server in body["ice_servers"] for u in server["urls"]]
        bad = [u for u in urls if not ICE_URL.match(u)]
        if bad:
            raise CheckFailed(f"/api/ice-servers hands out malformed URLs: {bad}")
        info["note"] = f"cookie-less: {', '.join(nodes)}; ice urls: {urls}"


def register(name: str) -> dict[str, Any]:
    status, body, _ = request("POST", "/api/auth/register", {
        "username": name, "email": f"{name}@example.org", "password": "correct horse 42"})
    expect(status, 201, f"register {name}", body)
    account: dict[str, Any] = body
    return account


def chat_across_nodes() -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:6]
    with step("register alice and bob, create their 1:1 conversation"):
        alice, bob = register(f"alice_{suffix}"), register(f"bob_{suffix}")
        status, conv, _ = request("POST", "/api/conversations", {
            "type": "one_to_one", "member_ids": [bob["user"]["id"]]}, token=alice["token"])
        expect(status, (200, 201), "create conversation", conv)
    with step("alice's WebSocket pinned to chat1, bob's to chat2") as info:
        a_ws, a_ready = connect(alice["token"], "chat1")
        b_ws, b_ready = connect(bob["token"], "chat2")
        if (a_ready["node_id"], b_ready["node_id"]) != ("node-1", "node-2"):
            raise CheckFailed(f"pinning failed: alice on {a_ready['node_id']}, "
                              f"bob on {b_ready['node_id']}")
        info["note"] = "alice on node-1, bob on node-2"
    state = {"alice": alice, "bob": bob, "conv": conv["id"], "a_ws": a_ws, "b_ws": b_ws,
             "last_seq": 0}
    for sender, receiver, s_ws, r_ws in (("alice", "bob", a_ws, b_ws),
                                         ("bob", "alice", b_ws, a_ws)):
        label = f"{sender} -> {receiver} live, node-{1 if sender == 'alice' else 2} -> " \
                f"node-{2 if sender == 'alice' else 1}"
        with step(label) as info:
            cmid = f"{sender}-{uuid.uuid4()}"
            start = time.monotonic()
            s_ws.send({"type": "chat_message", "ref": 1, "payload": {
                "conversation_id": state["conv"], "content": f"hello from {sender}",
                "client_msg_id": cmid}})
            ack = s_ws.wait_for("message_ack", 10)["payload"]
            acked = time.monotonic()
            got = r_ws.wait_for("new_message", 10,
                                lambda p, cmid=cmid: p["client_msg_id"] == cmid)["payload"]
            arrived = time.monotonic()
            state["last_seq"] = max(state["last_seq"], got["seq"], ack["seq"])
            info["note"] = (f"seq {got['seq']}: acked after {1000 * (acked - start):.0f} ms, "
                            f"delivered on the other node after {1000 * (arrived - start):.0f} ms")
    return state


def failover(state: dict[str, Any]) -> dict[str, float]:
    a_ws: WebSocket = state["a_ws"]
    b_ws: WebSocket = state["b_ws"]
    times: dict[str, float] = {}
    prober = Prober("chat1")
    prober.start()
    time.sleep(0.2)
    with step("podman-compose stop chat1 (alice's node), in the background") as info:
        stop_started = start = time.monotonic()
        full_env = {**os.environ, "CHATSRV_PORT": str(PORT)}
        stopper = subprocess.Popen(["podman-compose", "-p", PROJECT, "stop", "chat1"],
                                   cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            while True:
                frame = a_ws.recv(15)
                if frame is None:
                    raise CheckFailed("alice's WebSocket stayed open 15 s after stop")
        except Closed as closed:
            times["close"] = time.monotonic() - start
            if closed.code != 1001:
                raise CheckFailed(f"alice's socket closed with {closed.code}, wanted 1001") \
                    from None
        info["note"] = f"alice got close 1001 after {times['close']:.2f} s"
    with step("bob sends while alice is offline") as info:
        cmid = f"bob-offline-{uuid.uuid4()}"
        b_ws.send({"type": "chat_message", "ref": 2, "payload": {
            "conversation_id": state["conv"], "content": "sent while you were away",
            "client_msg_id": cmid}})
        ack = b_ws.wait_for("message_ack", 10)["payload"]
        state["offline_msg"] = ack["message_id"]
        info["note"] = f"acked, seq {ack['seq']}"
    with step("alice reconnects at once with her cookie chat1 (-> chat2) and syncs") as info:
        start = time.monotonic()
        a_ws, ready = connect(state["alice"]["token"], "chat1")
        times["reconnect"] = time.monotonic() - start
        times["reconnect_at"] = time.monotonic() - start + times["close"]
        state["a_ws"] = a_ws
        if ready["node_id"] != "node-2":
            raise CheckFailed(f"alice reconnected to {ready['node_id']}, wanted node-2")
        cookies = [c.split(";")[0] for c in a_ws.set_cookie]
        a_ws.send({"type": "sync", "ref": 3, "payload": {
            "conversations": {state["conv"]: state["last_seq"]}}})
        result = a_ws.wait_for("sync_result", 10)["payload"]
        times["synced"] = time.monotonic() - start
        ids = [m["id"] for m in result["messages"]]
        # anything that arrives in the next second must not repeat it
        while (frame := a_ws.recv(1.0)) is not None:
            a_ws.seen.append(frame)
            if frame["type"] == "new_message":
                ids.append(frame["payload"]["id"])
        count = ids.count(state["offline_msg"])
        if count != 1 or result["has_more"]:
            raise CheckFailed(f"the message sent meanwhile arrived {count} times "
                              f"(sync gave {len(result['messages'])}, has_more "
                              f"{result['has_more']})")
        info["note"] = (f"ready from node-2 {1000 * times['reconnect']:.0f} ms after the "
                        f"reconnect began (new cookie {', '.join(cookies) or 'none'}), synced "
                        f"after {1000 * times['synced']:.0f} ms; the offline message exactly "
                        "once")
    with step("podman-compose stop chat1 returns") as info:
        out, _ = stopper.communicate(timeout=30)
        times["stopped"] = time.monotonic() - stop_started
        info["note"] = f"{times['stopped']:.2f} s after it began; chat1's container is gone"
    with step("requests pinned to chat1 every 20 ms, from before the stop to 1 s after it")\
            as info:
        time.sleep(1.0)
        prober.stop()
        text, slowest, bad = prober.summary()
        times["slowest"] = slowest
        info["note"] = text
        if bad:
            raise CheckFailed(f"{len(bad)} requests failed: {bad[:5]}")
        with LOG.open("a") as log:
            log.write(f"$ podman-compose stop chat1\n{out}\n[exit {stopper.returncode}]\n")
        if stopper.returncode != 0:
            raise CheckFailed(f"podman-compose stop chat1 exited {stopper.returncode}")
    with step("REST pinned to the stopped node (cookie chat1) -> chat2") as info:
        start = time.monotonic()
        status, body, _ = request("GET", "/readyz", node="chat1")
        times["rest"] = time.monotonic() - start
        expect(status, 200, "GET /readyz with cookie chat1", body)
        if body["node_id"] != "node-2":
            raise CheckFailed(f"cookie chat1 answered by {body['node_id']} after the stop")
        info["note"] = f"node-2 answered in {1000 * times['rest']:.0f} ms"
    with step("bob -> alice live, both on node-2 now") as info:
        cmid = f"bob-after-{uuid.uuid4()}"
        start = time.monotonic()
        b_ws.send({"type": "chat_message", "ref": 4, "payload": {
            "conversation_id": state["conv"], "content": "welcome back", "client_msg_id": cmid}})
        a_ws.wait_for("new_message", 10, lambda p: p["client_msg_id"] == cmid)
        info["note"] = f"{1000 * (time.monotonic() - start):.0f} ms"
    return times


def teardown(quiet: bool = False) -> None:
    compose("down", "-t", "15", "-v", check=False)
    network = f"{PROJECT}_default"
    if run("podman", "network", "exists", network, check=False).returncode == 0:
        run("podman", "network", "rm", network, check=False)
    left = run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}",
               "--format", "{{.Names}}", check=False).stdout.split()
    if left and not quiet:
        raise CheckFailed(f"containers left after down: {left}")


def dump_logs() -> None:
    for service in ("chat1", "chat2", "haproxy", "postgres", "redis"):
        name = f"{PROJECT}_{service}_1"
        out = run("podman", "logs", "--tail", "15", name, check=False).stdout
        print(f"----- podman logs --tail 15 {name}\n{out}", end="")


def main() -> int:
    args = set(sys.argv[1:])
    unknown = args - {"--no-build", "--keep"}
    if unknown:
        print(__doc__)
        return 2
    LOG.write_text("")
    say(f"deploy-check: project {PROJECT}, port {PORT}, log {LOG}")
    ok = False
    try:
        preflight()
        base = ensure_base_image()
        if "--no-build" not in args:
            build(base)
        up()
        wait_ready()
        check_gateway_neighbours()
        state = chat_across_nodes()
        check_balance_and_ice(state["alice"]["token"])
        times = failover(state)
        state["a_ws"].close()
        state["b_ws"].close()
        ok = True
    except (CheckFailed, OSError, KeyError, ValueError) as exc:
        say(f"FAILED: {exc}")
        dump_logs()
    finally:
        if "--keep" in args:
            say(f"--keep: stack {PROJECT} left up")
        else:
            with step(f"podman-compose -p {PROJECT} down -t 15 -v (+ network rm)"):
                try:
                    teardown()
                except CheckFailed as exc:
                    say(f"FAILED: {exc}")
                    ok = False
    if ok:
        say(f"deploy-check passed in {time.monotonic() - T0:.1f} s "
            f"(failover: alice's socket closed {times['close']:.2f} s after the stop "
            f"began, ready on node-2 {1000 * times['reconnect']:.0f} ms later; a request "
            f"pinned to the stopped node once it was gone: {1000 * times['rest']:.0f} ms; "
            f"slowest request pinned to it during the stop: {1000 * times['slowest']:.0f} ms)")
        return 0
    say(f"deploy-check FAILED after {time.monotonic() - T0:.1f} s (log: {LOG})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
