"""Delivered/read watermarks: pure rules, no I/O."""

from __future__ import annotations

from chatsrv.domain.model import Watermarks


def advance(
    current: Watermarks, *, delivered_to: int = 0, read_to: int = 0, last_seq: int
) -> Watermarks:
    """Move a member's watermarks forward, never backwards, never past the last message.

    Reading implies delivery: read_to also raises delivered_seq.
    """
    read = min(max(current.read_seq, read_to), last_seq)
    delivered = min(max(current.delivered_seq, delivered_to, read), last_seq)
    return Watermarks(delivered_seq=max(delivered, current.delivered_seq),
                      read_seq=max(read, current.read_seq))


def unread(last_seq: int, read_seq: int) -> int:
    return max(0, last_seq - read_seq)


def status_for(seq: int, marks: Watermarks) -> str:
    """What a sender sees for message `seq` of one recipient: sent, delivered or read."""
    if marks.read_seq >= seq:
        return "read"
    if marks.delivered_seq >= seq:
        return "delivered"
    return "sent"
