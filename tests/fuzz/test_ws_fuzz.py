"""Hypothesis-generated WebSocket traffic against a real node, on SQLite and PostgreSQL.

Two fuzzers, each a stream of examples on long-lived sockets:

(a) `test_ws_frames_fuzz`: valid-looking frames of every client frame type in
    `frames.INBOUND`, with hostile values — huge, negative and 2^63 integers, NUL and lone
    surrogates (JSON `\\u0000` / `\\ud800` escapes), 5,000-deep nesting, wrong types, unknown
    fields, huge strings, bogus and real ids, random `ref`s — plus envelopes that are not
    frames at all. The fuzzing user shares a 1:1 and a group with a victim who is online, so
    messages, typing and calls fan out to a second socket.
(b) `test_ws_raw_fuzz`: raw frames at the byte level on a plain TCP socket after a valid
    handshake: reserved opcodes, RSV bits, unmasked frames, text frames that are not UTF-8,
    fragmented or oversized control frames, continuations out of place, declared lengths
    far over the limit, and headers cut short by a client that then goes away.

Properties, after every example: the node process is alive and logged no traceback; the
fuzzing socket either still answers a `ping` frame with `pong`, or was closed with a
documented close code (docs/protocol.md: 1002, 1007, 1009, 1013, 4401 — and for (a),
whose frames are all well-formed WebSocket, it must stay open: "nothing a client sends
closes its socket"); every `error` frame has a documented code other than `internal`; the
victim's socket still answers; and a bystander pair still exchanges a message (ack and
new_message). The fuzzers do not stop at a failure: each distinct failure is collected
with the frame that caused it, the node is restarted if it died, and the test fails once
with the whole list. Hypothesis runs derandomized with no example database and no
shrinking: CI sees the same examples every run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chatsrv.protocol import frames
from tests.fuzz.node import Account, Node, conversation, register, rest, send
from tests.fuzz.wsclient import Bystanders, Closed, WsClient, client_frame

pytestmark = pytest.mark.fuzz

FRAME_EXAMPLES = 200  # batches of 1-4 frames, per backend (~6 s here on a sound node)
RAW_EXAMPLES = 100  # raw byte sequences, one fresh socket each, per backend (~3 s here)
MAX_FRAME = 64 * 1024  # MAX_FRAME_BYTES: larger is an error frame; 16x larger closes (1009)
CLOSE_CODES = {1002, 1007, 1009, 1013, 4401}  # docs/protocol.md, what a client may cause
ERROR_CODES = {  # docs/protocol.md, "Error codes", the ones a WebSocket frame may get
    "invalid_json", "invalid_frame", "unknown_type", "invalid_payload", "invalid_request",
    "content_too_long", "frame_too_large", "duplicate_client_msg_id", "forbidden",
    "not_found", "rate_limited", "call_not_found", "call_not_ringing", "call_over",
    "call_exists", "already_in_call", "not_in_call", "not_a_contact", "unavailable",
    "conflict", "blocked", "unknown_user",
    # message changes (issue 14)
    "already_deleted", "edit_window_closed",
    # the `auth` frame's token checks
    "invalid_token", "token_expired", "session_revoked", "account_deactivated",
}
PROBE_WAIT = 10.0  # a reply to a probe ping; a healthy node answers in milliseconds
DEEP = "__DEEP__"  # placeholder replaced by 5,000-deep raw JSON after encoding

FUZZ_SETTINGS = {
    "deadline": None, "derandomize": True, "database": None,
    "phases": [Phase.explicit, Phase.generate],  # no shrinking: failures are collected
    "suppress_health_check": list(HealthCheck),
}


# ---------------------------------------------------------------------------- the world


@dataclass
class World:
    """The fuzzing user, an online victim sharing two conversations, and real ids."""

    node: Node
    fuzzer: Account
    victim: Account
    conversations: list[str]
    message_ids: list[str]
    ws: WsClient | None = None
    victim_ws: WsClient | None = None
    bystanders: Bystanders | None = None

    def connect(self) -> None:
        self.close()
        self.ws = WsClient(self.node, self.fuzzer.token)
        self.victim_ws = WsClient(self.node, self.victim.token)
        self.bystanders = Bystanders(self.node)

    def close(self) -> None:
        for c in (self.ws, self.victim_ws, self.bystanders):
            if c is not None:
                c.close()

    @property
    def user_ids(self) -> list[str]:
        return [self.fuzzer.id, self.victim.id]


def _world(node: Node) -> World:
    with rest(node) as http:
        fuzzer, victim = register(http), register(http)
        one = conversation(http, fuzzer, victim)
        group = conversation(http, fuzzer, victim, name="fuzz group")
        m1 = send(http, victim, one, "hello")["id"]
        m2 = send(http, fuzzer, group, "hi")["id"]
    world = World(node, fuzzer, victim, [one, group], [m1, m2])
    world.connect()
    return world


@dataclass
class Failures:
    found: dict[tuple[str, ...], str] = field(default_factory=dict)
    counts: dict[tuple[str, ...], int] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], example: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        self.found.setdefault(key, example[:700])

    def report(self) -> str:
        return "\n".join(f"- {' / '.join(k)} ({self.counts[k]}x)\n    e.g. {v}"
                         for k, v in self.found.items())


# ---------------------------------------------------------------------------- strategies


HUGE_INTS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1,
             10**30]
NASTY_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "a\udfffb", "\ud800\ud800", "😀" * 50,
              "\u202e\u0301", "<script>alert(1)</script>", "' OR 1=1 --", "%s%n", "\n\r\t",
              "x" * 5000]

hostile_int = st.one_of(st.sampled_from(HUGE_INTS), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.booleans())
hostile_text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=40),
                         st.text(alphabet=st.characters(codec="utf-8"), max_size=10)
                         .map(lambda s: s + "\x00"),
                         st.integers(4001, 70_000).map(lambda n: "y" * n))
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), hostile_int, hostile_text.filter(lambda s: len(s) < 200)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
deep = st.just(DEEP)  # a value that becomes 5,000 levels of nesting


def _ids(world: World) -> st.SearchStrategy[Any]:
    real = world.conversations + world.message_ids + world.user_ids
    return st.one_of(st.sampled_from(real), st.sampled_from(real).map(str.upper),
                     st.uuids().map(str), st.sampled_from(["", "0", "not-a-uuid", "x" * 100]),
                     hostile_text, any_json, deep)


def _field_values(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """Plausible-then-hostile values per payload field name of frames.PAYLOADS."""
    ids = _ids(world)
    sdp = st.one_of(st.just("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n"),
                    st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer", "x"]),
                                           "sdp": hostile_text}), hostile_text, any_json)
    seq = st.one_of(st.integers(0, 5), hostile_int, any_json)
    return {
        "conversation_id": ids, "message_id": ids, "recipient_id": ids,
        "call_id": st.one_of(st.sampled_from(["c1", "call.1:x-y"]), st.uuids().map(str), ids),
        "content": st.one_of(st.just("hello"), hostile_text, any_json, deep),
        "message_type": st.one_of(st.sampled_from(["text", "image", "TEXT", ""]), hostile_text),
        "client_msg_id": st.one_of(st.none(), st.uuids().map(str), st.just("dup-1"),
                                   hostile_text, any_json),
        "is_typing": st.one_of(st.booleans(), any_json),
        "up_to_seq": seq,
        "conversations": st.one_of(
            st.none(), st.dictionaries(ids.filter(lambda v: isinstance(v, str)), seq,
                                       max_size=3), any_json),
        "offer": sdp, "answer": sdp,
        "candidate": st.one_of(st.none(), st.fixed_dictionaries(
            {"candidate": hostile_text, "sdpMid": st.one_of(st.none(), hostile_text),
             "sdpMLineIndex": st.one_of(st.none(), hostile_int)}), any_json),
        "media": st.one_of(st.sampled_from(["audio", "video"]), hostile_text),
        "reason": st.one_of(st.none(), st.just("busy"), hostile_text, any_json),
        # message changes (issue 14)
        "emoji": st.one_of(st.sampled_from(["👍", ":+1:", "", "👍👍", ":X:", "\u200d"]),
                           hostile_text, any_json),
        "add": st.one_of(st.booleans(), any_json),
        "reply_to": st.one_of(st.none(), ids),
        "changes_since": st.one_of(st.none(), st.sampled_from(["c0", "c1", "c" + "9" * 30,
                                                               "bogus", ""]),
                                   hostile_text, any_json),
    }


def _valid_values(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """Values the server accepts, per payload field: frames built from these reach the
    services and the store, where one hostile field then does its damage."""
    sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\n"
    return {
        "conversation_id": st.sampled_from(world.conversations),
        "message_id": st.sampled_from(world.message_ids),
        "recipient_id": st.just(world.victim.id),
        "call_id": st.uuids().map(str),
        "content": st.text(min_size=1, max_size=20).filter(str.strip),
        "message_type": st.just("text"),
        "client_msg_id": st.one_of(st.none(), st.uuids().map(str)),
        "is_typing": st.booleans(),
        "up_to_seq": st.integers(1, 3),
        "conversations": st.fixed_dictionaries({world.conversations[0]: st.integers(0, 2)}),
        "offer": st.just(sdp), "answer": st.just(sdp),
        "candidate": st.just({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                              "sdpMid": "0", "sdpMLineIndex": 0}),
        "media": st.sampled_from(["audio", "video"]),
        "reason": st.sampled_from([None, "busy", "hangup"]),
        "emoji": st.sampled_from(["👍", ":+1:", "🇫🇷"]),
        "add": st.booleans(),
        "reply_to": st.none(),
        "changes_since": st.just("c0"),
    }


@st.composite
def _payload(draw: st.DrawFn, world: World, type_: str) -> Any:
    cls = frames.PAYLOADS.get(type_)
    hostile = _field_values(world)
    if cls is None or draw(st.integers(0, 9)) == 0:  # not an object, or anything at all
        return draw(st.one_of(any_json, deep))
    names = [f.name for f in msgspec.structs.fields(cls)]
    payload: dict[str, Any] = {}
    if names and draw(st.booleans()):
        # all fields acceptable but one: the shape that gets hostile data into storage
        valid = _valid_values(world)
        bad = draw(st.sampled_from(names))
        for name in names:
            source = hostile if name == bad else valid
            payload[name] = draw(source.get(name, any_json))
        return payload
    for name in names:
        if draw(st.integers(0, 7)) == 0:
            continue  # missing (required or not)
        payload[name] = draw(hostile.get(name, any_json))
    for _ in range(draw(st.integers(0, 2))):  # unknown fields
        payload[draw(st.text(max_size=10))] = draw(st.one_of(any_json, deep))
    return payload


@st.composite
def frame_texts(draw: st.DrawFn, world: World) -> str:
    """One text message: usually a frame of a known type, sometimes a broken envelope."""
    kind = draw(st.integers(0, 19))
    if kind == 0:  # not JSON, or JSON that is not a frame
        return draw(st.one_of(st.text(max_size=50), any_json.map(json.dumps)))
    type_ = draw(st.one_of(st.sampled_from(sorted(frames.INBOUND)),
                           st.sampled_from(["", "PING", "error", "ready", "new_message"]),
                           st.text(max_size=12))) if kind == 1 else \
        draw(st.sampled_from(sorted(frames.INBOUND)))
    frame: dict[str, Any] = {"type": type_ if kind != 2 else draw(any_json)}
    if draw(st.integers(0, 9)):
        frame["payload"] = draw(_payload(world, type_))
    if draw(st.booleans()):
        frame["ref"] = draw(st.one_of(st.text(max_size=20), hostile_int, any_json, deep))
    if draw(st.integers(0, 5)) == 0:
        frame[draw(st.text(max_size=8))] = draw(any_json)
    text = json.dumps(frame)  # NUL -> \u0000, lone surrogate -> \ud800 escapes
    if DEEP in text:
        nested = "[" * 5000 + "]" * 5000 if draw(st.booleans()) else '{"a":' * 5000 + "1" + "}" * 5000
        text = text.replace(json.dumps(DEEP), nested)
    return text


# ---------------------------------------------------------------------------- checks


def _check_replies(frames: list[dict[str, Any]], where: str, example: str,
                   failures: Failures) -> None:
    for f in frames:
        if f.get("type") != "error":
            continue
        code = (f.get("payload") or {}).get("code")
        if code == "internal":
            failures.add((where, "error frame 'internal'",
                          str((f.get("payload") or {}).get("message"))), example)
        elif code not in ERROR_CODES:
            failures.add((where, f"undocumented error code {code!r}"), example)


def _after_example(world: World, example: str, failures: Failures, mark: int,
                   *, fuzz_socket_may_close: bool) -> None:
    """The properties every example must leave true; collects what is not and repairs the
    world (restarted node, fresh sockets) so the next example starts clean."""
    node = world.node
    broken = False
    # 1. the fuzzing socket: still answering, or closed with a documented code
    assert world.ws is not None
    try:
        _check_replies(world.ws.roundtrip(wait=PROBE_WAIT), "fuzzer", example, failures)
    except TimeoutError:
        failures.add(("fuzzer socket", "no pong within the deadline (held open, silent)"),
                     example)
        broken = True
    except ConnectionError:
        closed = world.ws.closed or Closed(None)
        _check_replies(world.ws.frames, "fuzzer", example, failures)
        if not fuzz_socket_may_close:
            failures.add(("fuzzer socket", f"closed ({closed.code}) by a well-formed frame",
                          closed.reason[:80]), example)
        elif closed.code not in CLOSE_CODES:
            failures.add(("fuzzer socket", f"closed with undocumented code {closed.code}",
                          closed.reason[:80]), example)
        broken = True
    # 2. the node
    if not node.alive or not node.answers():
        if node.proc is not None:
            try:
                node.proc.wait(10)  # let it finish logging why
            except subprocess.TimeoutExpired:
                pass
        why = node.tracebacks_since(mark, frames=2)
        failures.add(("node", "died", *(w[:300] for w in why[-1:])), example)
        node.ensure_running()
        world.node = node
        world.connect()
        return
    for tb in dict.fromkeys(node.tracebacks_since(mark, frames=2)):
        failures.add(("node", "logged a traceback", tb[:300]), example)
    # 3. the victim and the bystanders
    try:
        assert world.victim_ws is not None and world.bystanders is not None
        _check_replies(world.victim_ws.roundtrip(wait=PROBE_WAIT), "victim", example, failures)
        world.bystanders.chat(wait=PROBE_WAIT)
    except (TimeoutError, ConnectionError, AssertionError) as exc:
        failures.add(("other users", f"stopped chatting: {type(exc).__name__}",
                      str(exc)[:120]), example)
        broken = True
    if broken:
        world.connect()


def _run(node: Node, examples: int, strategy: st.SearchStrategy[Any],
         one: Callable[[World, Any, Failures], None]) -> None:
    failures = Failures()
    world = _world(node)
    started, deaths_before = time.monotonic(), len(node.deaths)
    try:
        @settings(max_examples=examples, **FUZZ_SETTINGS)
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            one(world, data.draw(strategy(world)), failures)

        fuzz()
    finally:
        world.close()
    elapsed = time.monotonic() - started
    died = len(node.deaths) - deaths_before
    if failures.found:
        pytest.fail(f"{len(failures.found)} distinct failure(s) on {node.backend} in "
                    f"{elapsed:.0f} s{f'; the node died {died}x' if died else ''}:\n"
                    f"{failures.report()}", pytrace=False)


# ---------------------------------------------------------------------------- (a) frames


def _send_frames(world: World, texts: list[str], failures: Failures) -> None:
    mark = world.node.mark()
    assert world.ws is not None
    for text in texts:
        world.ws.send_text(text)
    example = " ++ ".join(t[:300] for t in texts)
    _after_example(world, example, failures, mark, fuzz_socket_may_close=False)


def test_ws_frames_fuzz(node: Node) -> None:
    """(a) Valid-looking frames of every client type, hostile values; see the module doc."""
    _run(node, FRAME_EXAMPLES,
         lambda world: st.lists(frame_texts(world), min_size=1, max_size=4), _send_frames)


# ---------------------------------------------------------------------------- (b) raw frames


@dataclass
class Raw:
    """A byte sequence to write after the handshake, and what a server must make of it."""

    data: bytes
    violation: bool  # a protocol error the server must close on (1002/1007)
    truncated: bool  # ends mid-frame: the client then goes away (EOF)
    oversized: bool  # declares a payload far over the limit (1009)
    what: str


PING_TEXT = b'{"type":"ping","ref":"raw","payload":{}}'


@st.composite
def raw_frames(draw: st.DrawFn, world: World) -> Raw:
    parts: list[bytes] = []
    labels: list[str] = []
    violation = oversized = truncated = False
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from([
            "text", "binary", "bad_utf8", "reserved_opcode", "rsv", "unmasked",
            "fragmented_control", "big_control", "orphan_continuation", "fragmented_text",
            "oversized_length", "ping", "pong", "over_limit_text"]))
        labels.append(kind)
        payload = draw(st.binary(max_size=64))
        if kind == "text":
            parts.append(client_frame(0x1, PING_TEXT))
        elif kind == "binary":
            parts.append(client_frame(0x2, payload))
        elif kind == "bad_utf8":
            bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
            parts.append(client_frame(0x1, b'{"type":"ping","ref":"' + bad + b'"}'))
            violation = True
        elif kind == "reserved_opcode":
            parts.append(client_frame(draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15])),
                                      payload))
            violation = True
        elif kind == "rsv":
            parts.append(client_frame(0x1, PING_TEXT, rsv=draw(st.integers(1, 7))))
            violation = True
        elif kind == "unmasked":
            parts.append(client_frame(0x1, PING_TEXT, mask=False))
            violation = True
        elif kind == "fragmented_control":
            parts.append(client_frame(draw(st.sampled_from([0x8, 0x9, 0xA])), payload[:10],
                                      fin=False))
            violation = True
        elif kind == "big_control":
            parts.append(client_frame(draw(st.sampled_from([0x9, 0xA])), b"p" * 126))
            violation = True
        elif kind == "orphan_continuation":
            parts.append(client_frame(0x0, payload))
            violation = True
        elif kind == "fragmented_text":  # legal: a message in pieces, with a ping between
            parts += [client_frame(0x1, PING_TEXT[:10], fin=False), client_frame(0x9, b"hi"),
                      client_frame(0x0, PING_TEXT[10:])]
        elif kind == "oversized_length":
            n = draw(st.sampled_from([MAX_FRAME * 16 + 1, 2**32, 2**63 - 1]))
            parts.append(client_frame(0x1, b'{"type":"ping"', length=n))
            labels[-1] = f"oversized_length:{n}"
            oversized = True
            break  # nothing after it can be read as a frame
        elif kind == "ping":
            parts.append(client_frame(0x9, payload[:125]))
        elif kind == "pong":
            parts.append(client_frame(0xA, payload[:125]))
        elif kind == "over_limit_text":
            parts.append(client_frame(0x1, b'{"type":"ping","payload":{},"x":"'
                                      + b"z" * (MAX_FRAME * 16 + 10) + b'"}'))
            oversized = True
            break
    data = b"".join(parts)
    if not oversized and draw(st.integers(0, 4)) == 0:  # cut the last frame short, then EOF
        cut = draw(st.integers(1, max(1, min(len(parts[-1]) - 1, 13))))
        data = data[:len(data) - len(parts[-1]) + cut]
        truncated = True
        labels.append(f"cut@{cut}")
    return Raw(data, violation, truncated, oversized, "+".join(labels))


def _send_raw(world: World, raw: Raw, failures: Failures) -> None:
    node = world.node
    mark = node.mark()
    example = f"{raw.what}: {raw.data[:120]!r}"
    try:
        ws = WsClient(node, world.fuzzer.token)
    except (OSError, TimeoutError) as exc:
        failures.add(("handshake", f"failed: {type(exc).__name__}"), example)
        node.ensure_running()
        world.connect()
        return
    with ws:
        ws.send_raw(raw.data)
        if raw.truncated:
            # the client goes away mid-frame: the server must let the connection go
            try:
                ws.sock.shutdown(socket.SHUT_WR)
                ws.wait_closed(wait=5)
            except TimeoutError:
                failures.add(("raw", "connection held after the client's EOF mid-frame"),
                             example)
            except OSError:
                pass
        elif raw.oversized:
            # a frame far over the limit (declared or sent): refused with 1009 at once,
            # without reading (or waiting for) the rest of it
            try:
                closed = ws.wait_closed(wait=3)
                if closed.code != 1009 and not (raw.violation and closed.code in (1002, 1007)):
                    failures.add(("raw", f"oversized frame closed with {closed.code}, "
                                         "expected 1009", closed.reason[:60]), example)
            except TimeoutError:
                failures.add(("raw", "oversized frame: socket held, no 1009 within 3 s",
                              raw.what.split(":")[0]), example)
        else:
            try:
                ws.roundtrip(wait=PROBE_WAIT)
                if raw.violation:
                    failures.add(("raw", "protocol violation accepted (pong, no close)",
                                  raw.what), example)
            except TimeoutError:
                failures.add(("raw", "neither pong nor close within the deadline",
                              raw.what), example)
            except ConnectionError:
                closed = ws.closed or Closed(None)
                if not raw.violation:
                    failures.add(("raw", f"legal frames closed the socket ({closed.code})",
                                  closed.reason[:60]), example)
                elif closed.code not in (1002, 1007):
                    failures.add(("raw", f"violation closed with {closed.code}, expected "
                                         "1002 or 1007", closed.reason[:60]), example)
    assert world.ws is not None
    _after_example(world, example, failures, mark, fuzz_socket_may_close=False)


def test_ws_raw_fuzz(node: Node) -> None:
    """(b) Raw frames at the byte level after a valid handshake; see the module doc."""
    _run(node, RAW_EXAMPLES, raw_frames, _send_raw)


def test_ws_fuzz_world_is_sane(node: Node) -> None:
    """The fuzzers' own probes work on a healthy socket: a ping gets its pong, the
    bystanders chat, and a frame the server refuses gets a documented error code (so a
    green fuzz run means something)."""
    world = _world(node)
    try:
        assert world.ws is not None
        world.ws.send_frame("chat_message", {"conversation_id": str(uuid.uuid4()),
                                             "content": "x"}, ref="nf")
        replies = world.ws.roundtrip()
        errors = [f for f in replies if f["type"] == "error" and f.get("ref") == "nf"]
        assert errors and errors[0]["payload"]["code"] in ERROR_CODES, replies
        assert world.bystanders is not None
        world.bystanders.chat()
    finally:
        world.close()
