"""WebRTC call signalling: offer → ring every callee device → first answer wins → ICE → end.

Media never touches the server. Lifetimes (DESIGN §1):
- the call session is a task (the caller leg) in the caller's connection nursery; the ring
  timeout is its cancel-scope deadline;
- the answering device's participation is a task (the callee leg) in its connection nursery;
- closing either socket cancels its leg, whose `finally` ends the call for the other side.
Every call is recorded in the CallLog (ringing at offer, then its final status).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from chatsrv.domain.calls import CallSession, CallStatus, glare_winner
from chatsrv.domain.errors import Conflict, Invalid, NotFound
from chatsrv.domain.events import Event
from chatsrv.domain.model import CallRecord, ConversationType, new_id, parse_id, utcnow
from chatsrv.domain.ports import CallLog, Router, Store, Subscriber
from chatsrv.services.membership import MembershipCache

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_EARLY_CANDIDATES = 64  # callee ICE sent before its answer, replayed once it answers


def _call_id(value: str) -> str:
    """Client-chosen call ids are accepted when short and plain (e.g. a UUID, "call_123")."""
    if not CALL_ID.match(value):
        raise Invalid("call_id must be 1-64 letters, digits or _.:-", field="call_id")
    return value


@dataclass(eq=False)
class LiveCall:
    session: CallSession
    caller: Subscriber
    ringing: list[Subscriber]
    callee: Subscriber | None = None
    answered: trio.Event = field(default_factory=trio.Event)
    answered_at: datetime | None = None
    caller_scope: trio.CancelScope | None = None
    callee_scope: trio.CancelScope | None = None
    early_candidates: list[tuple[str, Any]] = field(default_factory=list)


class CallService:
    def __init__(self, store: Store, history: CallLog, router: Router, members: MembershipCache,
                 *, ring_timeout: float, stun_urls: tuple[str, ...], turn_urls: tuple[str, ...],
                 turn_secret: str, turn_ttl: float, record_deadline: float) -> None:
        self._store = store
        self._history = history
        self._router = router
        self._members = members
        self._ring_timeout = ring_timeout
        self._stun_urls = stun_urls
        self._turn_urls = turn_urls
        self._turn_secret = turn_secret
        self._turn_ttl = turn_ttl
        # how long a shielded history write may take while a leg tears down
        self._record_deadline = record_deadline
        self._calls: dict[str, LiveCall] = {}
        self._by_user: dict[str, LiveCall] = {}  # a user is in at most one call

    # ------------------------------------------------------------------ frames

    async def handle(self, conn: Subscriber, type_: str, p: Any, ref: Any) -> None:
        if type_ == "call_offer":
            await self._offer(conn, p, ref)
            return
        live = self._find(conn, p.call_id)
        if type_ == "call_answer":
            await self._answer(conn, live, p.answer)
        elif type_ == "ice_candidate":
            self._ice(conn, live, p.candidate)
        elif type_ == "call_reject":
            live.session.reject(conn.user_id, p.reason, now=trio.current_time())
            await self._finish(live, by=conn)
        elif type_ == "call_end":
            live.session.end(conn.user_id, p.reason, now=trio.current_time())
            await self._finish(live, by=conn)

    def _find(self, conn: Subscriber, call_id: str) -> LiveCall:
        live = self._calls.get(_call_id(call_id))
        if live is None or not live.session.involves(conn.user_id):
            raise NotFound("call not found (or already over)", code="call_not_found")
        return live

    async def _offer(self, conn: Subscriber, p: Any, ref: Any) -> None:
        caller_id = conn.user_id
        callee_id, conversation_id = await self._callee_of(caller_id, p)
        call_id = _call_id(p.call_id) if p.call_id else new_id()
        taken = self._calls.get(call_id)
        if taken is not None:
            if taken.session.involves(caller_id):
                raise Conflict("call_id is already in use", code="call_exists")
            raise NotFound("call not found", code="not_found")  # someone else's: not revealed
        if p.call_id:
            earlier = await self._history.get_call(call_id)
            if earlier is not None:
                if caller_id in (earlier.caller_id, earlier.callee_id):
                    raise Conflict("call_id was used for an earlier call", code="call_exists")
                raise NotFound("call not found", code="not_found")
        now = trio.current_time()
        session = CallSession(
            id=call_id, caller_id=caller_id, callee_id=callee_id,
            conversation_id=conversation_id, media=p.media, started_at=now,
            ring_deadline=now + self._ring_timeout, caller_session=conn.session_id,
        )
        started = utcnow()
        mine = self._by_user.get(caller_id)
        theirs = self._by_user.get(callee_id)
        if theirs is not None and theirs is mine and theirs.session.caller_id == callee_id \
                and theirs.session.status is CallStatus.RINGING:
            # Glare: both called each other. One call survives, the same on both sides.
            if glare_winner(theirs.session, session) is theirs.session:
                session.end(caller_id, "glare", now=now)
                await self._record(session, started)
                await self._finish_record(session, None)
                conn.send_nowait(Event("call_end", {"call_id": call_id, "reason": "glare",
                                                    "status": session.status.value,
                                                    "kept_call_id": theirs.session.id}, ref=ref))
                return
            theirs.session.end(callee_id, "glare", now=now)
            await self._finish(theirs, by=None, kept_call_id=call_id)
            mine = theirs = None
        if mine is not None:
            raise Conflict("you are already in a call", code="already_in_call")
        await self._record(session, started)
        if theirs is not None:
            session.reject(callee_id, "busy", now=now)
            await self._finish_record(session, None)
            conn.send_nowait(Event("call_reject", {"call_id": call_id, "reason": "busy",
                                                   "status": session.status.value}, ref=ref))
            return
        devices = list(self._router.local(callee_id))
        if not devices:
            session.unreachable(now=now)
            await self._finish_record(session, None)
            conn.send_nowait(Event("call_end", {"call_id": call_id, "reason": "offline",
                                                "status": session.status.value}, ref=ref))
            return
        live = LiveCall(session=session, caller=conn, ringing=devices)
        self._calls[call_id] = live
        self._by_user[caller_id] = self._by_user[callee_id] = live
        offer = Event("call_offer", {"call_id": call_id, "caller_id": caller_id,
                                     "conversation_id": conversation_id, "media": p.media,
                                     "offer": p.offer})
        for device in devices:
            device.send_nowait(offer)
        conn.send_nowait(Event("call_ringing", {"call_id": call_id, "callee_id": callee_id,
                                                "devices": len(devices)}, ref=ref))
        conn.start_soon(self._caller_leg, live)

    async def _callee_of(self, caller_id: str, p: Any) -> tuple[str, str | None]:
        """Who is called, and in which conversation. Only users who share a conversation
        can call each other. Raises Invalid / NotFound."""
        if p.conversation_id:
            cid = parse_id(p.conversation_id, "conversation_id")
            conv = await self._store.get_conversation(cid)
            if conv is None or conv.member(caller_id) is None:
                raise NotFound("conversation not found")
            others = [m.user_id for m in conv.members if m.user_id != caller_id]
            if p.recipient_id:
                callee = parse_id(p.recipient_id, "recipient_id")
                if callee not in others:
                    raise NotFound("recipient is not in this conversation")
            elif conv.type is ConversationType.ONE_TO_ONE and len(others) == 1:
                callee = others[0]
            else:
                raise Invalid("a group call offer needs recipient_id", field="recipient_id")
            return callee, cid
        if not p.recipient_id:
            raise Invalid("give recipient_id or conversation_id", field="recipient_id")
        callee = parse_id(p.recipient_id, "recipient_id")
        if callee == caller_id:
            raise Invalid("you cannot call yourself", field="recipient_id")
        if callee not in await self._store.contacts(caller_id):
            # strangers and unknown ids look the same
            raise NotFound("no conversation shared with this user", code="not_a_contact")
        return callee, None

    async def _answer(self, conn: Subscriber, live: LiveCall, answer: Any) -> None:
        live.session.answer(conn.user_id, conn.session_id, now=trio.current_time())
        live.callee = conn
        live.answered_at = utcnow()
        live.answered.set()
        conn.start_soon(self._callee_leg, live)
        call_id = live.session.id
        live.caller.send_nowait(Event("call_answer", {"call_id": call_id, "answer": answer,
                                                      "callee_id": conn.user_id}))
        elsewhere = Event("call_answered_elsewhere", {"call_id": call_id})
        for device in live.ringing:
            if device is not conn:
                device.send_nowait(elsewhere)
        for session_id, candidate in live.early_candidates:
            if session_id == conn.session_id:
                live.caller.send_nowait(self._candidate(live, conn.user_id, candidate))
        live.early_candidates.clear()
        with trio.move_on_after(self._record_deadline, shield=True):
            await self._history.mark_answered(call_id, live.answered_at)

    def _ice(self, conn: Subscriber, live: LiveCall, candidate: Any) -> None:
        """Relayed only between the two devices of the call (to every ringing callee
        device until one answers)."""
        s = live.session
        if conn.user_id == s.caller_id and conn.session_id == s.caller_session:
            targets = [live.callee] if live.callee is not None else live.ringing
            event = self._candidate(live, conn.user_id, candidate)
            for t in targets:
                if t is not None:
                    t.send_nowait(event)
        elif conn.user_id == s.callee_id and live.callee is None:
            if len(live.early_candidates) < MAX_EARLY_CANDIDATES:
                live.early_candidates.append((conn.session_id, candidate))
        elif conn.user_id == s.callee_id and conn.session_id == s.callee_session:
            live.caller.send_nowait(self._candidate(live, conn.user_id, candidate))
        else:
            raise Conflict("this device is not in the call", code="not_in_call")

    @staticmethod
    def _candidate(live: LiveCall, sender: str, candidate: Any) -> Event:
        return Event("ice_candidate", {"call_id": live.session.id, "candidate": candidate,
                                       "from": sender})

    # ------------------------------------------------------------------ legs

    async def _caller_leg(self, live: LiveCall) -> None:
        """The call session, owned by the caller's connection: rings until the deadline,
        then lives until the call ends. Cancelled when the caller's socket closes."""
        s = live.session
        try:
            with trio.CancelScope() as scope:
                live.caller_scope = scope
                with trio.move_on_at(s.ring_deadline):
                    await live.answered.wait()
                if s.timeout(now=trio.current_time()):
                    await self._finish(live, by=None)
                    return
                await trio.sleep_forever()
        finally:
            if s.drop(s.caller_id, now=trio.current_time()):
                with trio.move_on_after(self._record_deadline, shield=True):
                    await self._finish(live, by=live.caller)

    async def _callee_leg(self, live: LiveCall) -> None:
        """The answering device's part, owned by its connection."""
        s = live.session
        try:
            with trio.CancelScope() as scope:
                live.callee_scope = scope
                await trio.sleep_forever()
        finally:
            if s.drop(s.callee_id, now=trio.current_time()):
                with trio.move_on_after(self._record_deadline, shield=True):
                    await self._finish(live, by=live.callee)

    async def _finish(self, live: LiveCall, *, by: Subscriber | None,
                      kept_call_id: str | None = None) -> None:
        """The session reached a final state: record it, tell whoever is not `by`, end both
        legs."""
        s = live.session
        self._calls.pop(s.id, None)
        for uid in (s.caller_id, s.callee_id):
            if self._by_user.get(uid) is live:
                del self._by_user[uid]
        # history first, so whoever is told the call is over can already read it there
        await self._finish_record(s, live.answered_at)
        payload: dict[str, Any] = {"call_id": s.id, "reason": s.end_reason,
                                   "status": s.status.value}
        if kept_call_id:
            payload["kept_call_id"] = kept_call_id
        to_caller = Event("call_reject" if s.status in (CallStatus.REJECTED, CallStatus.BUSY)
                          else "call_end", payload)
        to_callee = Event("call_end", payload)
        if by is not live.caller:
            live.caller.send_nowait(to_caller)
        callee_devices = [live.callee] if live.callee is not None else live.ringing
        for device in callee_devices:
            if device is not None and device is not by:
                device.send_nowait(to_callee)
        for scope in (live.caller_scope, live.callee_scope):
            if scope is not None:
                scope.cancel()

    async def _record(self, s: CallSession, started: datetime) -> None:
        await self._history.record_call(CallRecord(
            id=s.id, conversation_id=s.conversation_id, caller_id=s.caller_id,
            callee_id=s.callee_id, media=s.media, status=s.status.value, end_reason=None,
            started_at=started,
        ))

    async def _finish_record(self, s: CallSession, answered_at: datetime | None) -> None:
        await self._history.finish_call(s.id, status=s.status.value, end_reason=s.end_reason,
                                        answered_at=answered_at, ended_at=utcnow())

    # ------------------------------------------------------------------ REST

    async def history(self, user_id: str, *, limit: int, before: datetime | None) -> list[CallRecord]:
        if not 1 <= limit <= 100:
            raise Invalid("limit must be 1-100", field="limit")
        return await self._history.list_calls(user_id, before=before or utcnow(), limit=limit)

    def ice_servers(self, user_id: str) -> dict[str, Any]:
        """STUN from config; TURN with TURN REST API credentials (username
        `expiry:user_id`, credential base64(HMAC-SHA1(secret, username))) when a secret is set,
        so a stock coturn with use-auth-secret accepts them."""
        servers: list[dict[str, Any]] = []
        if self._stun_urls:
            servers.append({"urls": list(self._stun_urls)})
        ttl = int(self._turn_ttl)
        if self._turn_urls and self._turn_secret:
            username = f"{int(time.time()) + ttl}:{user_id}"
            digest = hmac.new(self._turn_secret.encode(), username.encode(), hashlib.sha1).digest()
            servers.append({"urls": list(self._turn_urls), "username": username,
                            "credential": base64.b64encode(digest).decode(),
                            "credentialType": "password"})
        return {"ice_servers": servers, "iceServers": servers, "ttl": ttl}

    def active_calls(self) -> int:
        return len(self._calls)
