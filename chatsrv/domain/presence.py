"""Presence book of one node: which users have live connections here. Pure, time passed in.

A user is online while at least one connection is alive. When the last one closes, the user
becomes offline only after `grace` seconds without a new connection, so a quick reconnect
(page reload, network switch) does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(slots=True)
class PresenceBook:
    grace: float
    _sessions: dict[str, set[str]] = field(default_factory=dict)
    _leaving: dict[str, float] = field(default_factory=dict)  # user -> offline deadline

    def connect(self, user_id: str, session_id: str) -> bool:
        """Record a connection. True if the user just became online (was not online or leaving)."""
        was_leaving = self._leaving.pop(user_id, None) is not None
        sessions = self._sessions.setdefault(user_id, set())
        first = not sessions
        sessions.add(session_id)
        return first and not was_leaving

    def disconnect(self, user_id: str, session_id: str, *, now: float) -> float | None:
        """Forget a connection. Returns the deadline at which the user goes offline if that was
        the last connection, else None."""
        sessions = self._sessions.get(user_id)
        if sessions is None:
            return None
        sessions.discard(session_id)
        if sessions:
            return None
        del self._sessions[user_id]
        deadline = now + self.grace
        self._leaving[user_id] = deadline
        return deadline

    def expire(self, *, now: float) -> list[str]:
        """Users whose grace ran out: they are offline from now on."""
        gone = [u for u, deadline in self._leaving.items() if deadline <= now]
        for u in gone:
            del self._leaving[u]
        return gone

    def next_deadline(self) -> float | None:
        return min(self._leaving.values(), default=None)

    def is_online(self, user_id: str) -> bool:
        return user_id in self._sessions or user_id in self._leaving

    def online_users(self) -> list[str]:
        return list(self._sessions.keys() | self._leaving.keys())

    def session_count(self, user_id: str) -> int:
        return len(self._sessions.get(user_id, ()))
