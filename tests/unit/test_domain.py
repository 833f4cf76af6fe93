"""Pure rules: watermarks, rate limiting, presence and typing books. No Trio."""

from __future__ import annotations

import pytest

from chatsrv.domain.errors import Invalid
from chatsrv.domain.model import Watermarks, iso, parse_id
from chatsrv.domain.presence import PresenceBook
from chatsrv.domain.ratelimit import TokenBucket
from chatsrv.domain.receipts import advance, status_for, unread
from chatsrv.domain.typing_state import TypingBook


class TestReceipts:
    def test_read_implies_delivered(self) -> None:
        assert advance(Watermarks(0, 0), read_to=4, last_seq=10) == Watermarks(4, 4)

    def test_never_backwards(self) -> None:
        w = Watermarks(7, 5)
        assert advance(w, delivered_to=3, read_to=2, last_seq=10) == w

    def test_never_past_the_last_message(self) -> None:
        assert advance(Watermarks(0, 0), delivered_to=99, read_to=50, last_seq=10) == Watermarks(10, 10)

    def test_status_and_unread(self) -> None:
        w = Watermarks(delivered_seq=5, read_seq=3)
        assert [status_for(s, w) for s in (2, 3, 4, 5, 6)] == [
            "read", "read", "delivered", "delivered", "sent"]
        assert unread(10, 3) == 7 and unread(3, 3) == 0


class TestTokenBucket:
    def test_burst_then_refill(self) -> None:
        b = TokenBucket(rate=2.0, burst=3.0)
        assert [b.take(now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        wait = b.take(now=0.0)
        assert wait == pytest.approx(0.5)
        assert b.take(now=0.5) == 0.0
        assert b.take(now=0.5) > 0

    def test_never_exceeds_burst(self) -> None:
        b = TokenBucket(rate=100.0, burst=2.0)
        b.take(now=0.0)
        assert b.take(now=1000.0) == 0.0 and b.take(now=1000.0) == 0.0
        assert b.take(now=1000.0) > 0


class TestPresenceBook:
    def test_online_with_any_connection_offline_after_grace(self) -> None:
        p = PresenceBook(grace=2.0)
        assert p.connect("u", "phone") is True
        assert p.connect("u", "laptop") is False
        assert p.disconnect("u", "phone", now=10.0) is None
        assert p.disconnect("u", "laptop", now=11.0) == 13.0
        assert p.is_online("u") and p.expire(now=12.9) == []
        assert p.expire(now=13.0) == ["u"] and not p.is_online("u")

    def test_reconnect_within_grace_does_not_flap(self) -> None:
        p = PresenceBook(grace=2.0)
        p.connect("u", "a")
        p.disconnect("u", "a", now=0.0)
        assert p.connect("u", "b") is False  # no new "online"
        assert p.expire(now=5.0) == []
        assert p.session_count("u") == 1

    def test_next_deadline(self) -> None:
        p = PresenceBook(grace=1.0)
        assert p.next_deadline() is None
        p.connect("a", "1")
        p.connect("b", "2")
        p.disconnect("a", "1", now=5.0)
        p.disconnect("b", "2", now=3.0)
        assert p.next_deadline() == 4.0

    def test_unknown_disconnect_is_ignored(self) -> None:
        assert PresenceBook(grace=1.0).disconnect("ghost", "x", now=0.0) is None


class TestTypingBook:
    def test_start_refresh_expire_stop(self) -> None:
        t = TypingBook(ttl=6.0)
        assert t.start("c", "u", now=0.0) is True
        assert t.start("c", "u", now=4.0) is False  # refresh, not news
        assert t.expire(now=9.9) == []
        assert t.expire(now=10.0) == [("c", "u")]
        assert t.stop("c", "u") is False
        t.start("c", "u", now=20.0)
        assert t.active_for("u") == ["c"]
        assert t.stop("c", "u") is True and t.next_deadline() is None


def test_ids_and_times() -> None:
    assert parse_id("6F1C2F6E-9A63-4A1C-9A1E-4D2A0C1B7E11") == "6f1c2f6e-9a63-4a1c-9a1e-4d2a0c1b7e11"
    with pytest.raises(Invalid):
        parse_id("x")
    from datetime import UTC, datetime
    assert iso(datetime(2024, 1, 1, 12, tzinfo=UTC)) == "2024-01-01T12:00:00.000Z"


def test_new_ids_are_distinct_version_4_uuids_in_canonical_form() -> None:
    import uuid

    from chatsrv.domain.model import new_id, parse_id

    ids = [new_id() for _ in range(2000)]  # several refills of the random buffer
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == i
        assert parse_id(i) == i
    assert parse_id(ids[0].upper()) == ids[0]  # other spellings are made canonical
