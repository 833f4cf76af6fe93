"""Token bucket: pure, time passed in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, *, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens. Returns 0.0 on success, else seconds until it would succeed."""
        wait = self.peek(now=now, cost=cost)
        if wait == 0.0:
            self.tokens -= cost
        return wait

    def peek(self, *, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0.0: now), taking nothing."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def full(self, *, now: float) -> bool:
        """Refilled completely: the bucket can be forgotten."""
        return self.tokens < 0 or self.tokens + (now - self.updated) * self.rate >= self.burst
