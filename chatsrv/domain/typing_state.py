"""Typing indicators: pure expiry rules, time passed in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TypingBook:
    """Who is typing where, with the time each state expires unless refreshed."""

    ttl: float
    _until: dict[tuple[str, str], float] = field(default_factory=dict)  # (conv, user) -> expiry

    def start(self, conversation_id: str, user_id: str, *, now: float) -> bool:
        """Refresh typing. True if it is a new state (others must be told)."""
        key = (conversation_id, user_id)
        fresh = key not in self._until
        self._until[key] = now + self.ttl
        return fresh

    def stop(self, conversation_id: str, user_id: str) -> bool:
        """True if the user was typing (others must be told it stopped)."""
        return self._until.pop((conversation_id, user_id), None) is not None

    def expire(self, *, now: float) -> list[tuple[str, str]]:
        gone = [k for k, until in self._until.items() if until <= now]
        for k in gone:
            del self._until[k]
        return gone

    def next_deadline(self) -> float | None:
        return min(self._until.values(), default=None)

    def active_for(self, user_id: str) -> list[str]:
        return [c for (c, u) in self._until if u == user_id]
