"""The push services over HTTP: one Web Push request per subscription (RFC 8030 headers,
RFC 8291 body, RFC 8292 VAPID), and the JSON webhook (`PUSH_WEBHOOK_URL`).

Each call returns an Outcome and never raises for what the other side answered or for a
network failure; deadlines are the caller's (`trio.fail_after` around the call; httpx's own
timeout is only a backstop). One pooled httpx client per node (`open_push_http`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
import trio

from chatsrv.adapters.push.webpush import VapidKey, b64url_decode, encrypt
from chatsrv.domain.model import utcnow
from chatsrv.domain.push import PushSubscription

Kind = Literal["sent", "gone", "retry", "rejected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """sent (2xx); gone (404/410: the subscription expired or was revoked); retry (429,
    5xx, a network failure; `retry_after` seconds if the service said); rejected (any
    other answer: this push will never be taken)."""

    kind: Kind
    status: int = 0
    retry_after: float | None = None
    detail: str = ""


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


def outcome_of(status: int, headers: httpx.Headers, *, gone: bool = True) -> Outcome:
    if 200 <= status < 300:
        return Outcome("sent", status)
    if gone and status in (404, 410):
        return Outcome("gone", status)
    if status == 429 or status >= 500:
        return Outcome("retry", status, retry_after(headers.get("Retry-After")))
    return Outcome("rejected", status)


class PushHttp:
    def __init__(self, client: httpx.AsyncClient, vapid: VapidKey) -> None:
        self._client = client
        self.vapid = vapid

    async def web_push(self, sub: PushSubscription, payload: dict[str, object], *,
                       topic: str, ttl: int, urgency: str) -> Outcome:
        """POST the encrypted payload to the subscription's endpoint."""
        try:
            body = encrypt(json.dumps(payload, separators=(",", ":")).encode(),
                           ua_public=b64url_decode(sub.p256dh),
                           auth_secret=b64url_decode(sub.auth))
        except ValueError as exc:  # keys stored before validation, or damaged: never usable
            return Outcome("gone", detail=f"subscription keys unusable ({exc})")
        headers = {
            "Authorization": self.vapid.authorization(sub.endpoint),
            "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream",
            "TTL": str(ttl), "Urgency": urgency, "Topic": topic,
        }
        return await self._post(sub.endpoint, body, headers, gone=True)

    async def webhook(self, url: str, payload: dict[str, object]) -> Outcome:
        """POST the event as JSON. 404/410 there is a misconfiguration, not a gone
        subscription: rejected."""
        return await self._post(url, json.dumps(payload).encode(),
                                {"Content-Type": "application/json"}, gone=False)

    async def _post(self, url: str, body: bytes, headers: dict[str, str], *,
                    gone: bool) -> Outcome:
        try:
            resp = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome("retry", detail=f"{type(exc).__name__}: {exc}")
        return outcome_of(resp.status_code, resp.headers, gone=gone)


@asynccontextmanager
async def open_push_http(vapid: VapidKey, *, backstop: float,
                         close_deadline: float = 2.0) -> AsyncIterator[PushHttp]:
    """The node's push client; closed (shielded, within `close_deadline`) when the block
    ends."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(backstop), follow_redirects=False,
                               limits=httpx.Limits(max_connections=64,
                                                   max_keepalive_connections=16))
    try:
        yield PushHttp(client, vapid)
    finally:
        with trio.move_on_after(close_deadline, shield=True):
            await client.aclose()
