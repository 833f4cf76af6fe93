"""WebRTC call signalling: offer → ring every callee device → first answer wins → ICE → end.

Media never touches the server. The call's state lives here (`LiveCall`, around the pure
state machine domain/calls.py); each device that takes part runs a *leg*, a task its
connection's Session starts in its own nursery (`await nursery.start(calls.run_leg, ...)`):

- the caller's leg rings until the deadline (the ring timeout is its `move_on_at`), then
  lives until the call is over;
- the answering device's leg lives until the call is over;
- a leg ends by itself when the call is over (`LiveCall.over` is set), and a leg cancelled
  because its socket closed ends the call for the other side in its `finally`.

Nobody cancels another task's scope: state changes set events the legs wait on. Frames go
to devices through the Router (`send_to` one connection, `publish` to every device of a
user). Decisions (busy, glare, call id taken) are made with no await between the check and
the registration, so concurrent offers cannot both pass. Every call is recorded in the
CallLog (ringing at offer, then its final status).
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
from chatsrv.domain.model import CallRecord, ConversationType, new_id, parse_id, utcnow
from chatsrv.domain.ports import CallLog, Router, Store
from chatsrv.protocol.frames import (
    CallAnsweredElsewhere,
    CallAnswerIn,
    CallAnswerOut,
    CallOfferIn,
    CallOfferOut,
    CallOver,
    CallReasonIn,
    CallRejectOut,
    CallRinging,
    Frame,
    IceCandidateIn,
    IceCandidateOut,
    Out,
)

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_EARLY_CANDIDATES = 64  # callee ICE sent before its answer, replayed once it answers


def _call_id(value: str) -> str:
    """Client-chosen call ids are accepted when short and plain (e.g. a UUID, "call_123")."""
    if not CALL_ID.match(value):
        raise Invalid("call_id must be 1-64 letters, digits or _.:-", field="call_id")
    return value


@dataclass(frozen=True, slots=True)
class Device:
    """One connection of one user: what takes part in a call."""

    user_id: str
    connection_id: str


@dataclass(eq=False)
class LiveCall:
    session: CallSession
    caller: Device
    callee: Device | None = None  # the device that answered
    answered_at: datetime | None = None
    # set once ringing is over (answered or ended): the caller's leg stops waiting
    ringing_over: trio.Event = field(default_factory=trio.Event)
    over: trio.Event = field(default_factory=trio.Event)  # every leg returns
    early_candidates: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Offered:
    """The answer to an offer: `reply` for the caller (call_ringing, or call_end /
    call_reject when it ended at once); `ringing`: the caller's leg must run."""

    call_id: str
    reply: Out
    ringing: bool


class CallService:
    def __init__(self, store: Store, history: CallLog, router: Router, *,
                 ring_timeout: float, stun_urls: tuple[str, ...], turn_urls: tuple[str, ...],
                 turn_secret: str, turn_ttl: float, record_deadline: float) -> None:
        self._store = store
        self._history = history
        self._router = router
        self._ring_timeout = ring_timeout
        self._stun_urls = stun_urls
        self._turn_urls = turn_urls
        self._turn_secret = turn_secret
        self._turn_ttl = turn_ttl
        # how long a shielded history write may take while a leg tears down
        self._record_deadline = record_deadline
        self._calls: dict[str, LiveCall] = {}
        self._by_user: dict[str, LiveCall] = {}  # a user is in at most one call

    # ------------------------------------------------------------------ signalling

    async def offer(self, caller: Device, p: CallOfferIn) -> Offered:
        """Place a call. Raises Invalid, NotFound (no shared conversation, someone else's
        call id), Conflict (already in a call, the caller's own call id reused)."""
        callee_id, conversation_id = await self._callee_of(caller.user_id, p)
        call_id = _call_id(p.call_id) if p.call_id else new_id()
        if p.call_id:
            earlier = await self._history.get_call(call_id)
            if earlier is not None:
                if caller.user_id in (earlier.caller_id, earlier.callee_id):
                    raise Conflict("call_id was used for an earlier call", code="call_exists")
                raise NotFound("call not found", code="not_found")
        # From here to the registration: no await (concurrent offers decide one by one).
        taken = self._calls.get(call_id)
        if taken is not None:
            if taken.session.involves(caller.user_id):
                raise Conflict("call_id is already in use", code="call_exists")
            raise NotFound("call not found", code="not_found")  # someone else's: not revealed
        now = trio.current_time()
        session = CallSession(
            id=call_id, caller_id=caller.user_id, callee_id=callee_id,
            conversation_id=conversation_id, media=p.media, started_at=now,
            ring_deadline=now + self._ring_timeout, caller_session=caller.connection_id,
        )
        started = utcnow()
        mine = self._by_user.get(caller.user_id)
        theirs = self._by_user.get(callee_id)
        glare = theirs is not None and theirs is mine and theirs.session.caller_id == callee_id \
            and theirs.session.status is CallStatus.RINGING
        if glare:
            assert theirs is not None
            # Both called each other. One call survives, the same on both sides.
            if glare_winner(theirs.session, session) is theirs.session:
                session.end(caller.user_id, "glare", now=now)
                await self._record(session, started, final=True)
                return Offered(call_id, CallOver(call_id=call_id, reason="glare",
                                                 status=session.status.value,
                                                 kept_call_id=theirs.session.id), False)
            theirs.session.end(callee_id, "glare", now=now)
            await self._finish(theirs, by=None, kept_call_id=call_id)
            mine = theirs = None
        if mine is not None:
            raise Conflict("you are already in a call", code="already_in_call")
        devices = len(self._router.local(callee_id))
        if theirs is not None or devices == 0:
            if theirs is not None:
                session.reject(callee_id, "busy", now=now)
                reply: Out = CallRejectOut(call_id=call_id, reason="busy",
                                           status=session.status.value)
            else:
                session.unreachable(now=now)
                reply = CallOver(call_id=call_id, reason="offline", status=session.status.value)
            await self._record(session, started, final=True)
            return Offered(call_id, reply, False)
        live = LiveCall(session=session, caller=caller)
        self._calls[call_id] = live
        self._by_user[caller.user_id] = self._by_user[callee_id] = live
        await self._record(session, started)
        self._router.publish([callee_id], Frame(CallOfferOut(
            call_id=call_id, caller_id=caller.user_id, conversation_id=conversation_id,
            media=p.media, offer=p.offer)))
        return Offered(call_id, CallRinging(call_id=call_id, callee_id=callee_id,
                                            devices=devices), True)

    async def answer(self, device: Device, p: CallAnswerIn) -> str:
        """The first callee device to answer wins; its leg must run next (returns the call
        id). Raises NotFound, Conflict (answered elsewhere, over)."""
        live = self._find(device, p.call_id)
        live.session.answer(device.user_id, device.connection_id, now=trio.current_time())
        live.callee = device
        live.answered_at = utcnow()
        live.ringing_over.set()
        call_id = live.session.id
        caller = live.caller
        self._router.send_to(caller.user_id, caller.connection_id, Frame(CallAnswerOut(
            call_id=call_id, answer=p.answer, callee_id=device.user_id)))
        self._router.publish([device.user_id], Frame(CallAnsweredElsewhere(call_id=call_id)),
                             exclude=device.connection_id)
        for connection_id, candidate in live.early_candidates:
            if connection_id == device.connection_id:
                self._router.send_to(caller.user_id, caller.connection_id,
                                     self._candidate(live, device.user_id, candidate))
        live.early_candidates.clear()
        with trio.move_on_after(self._record_deadline, shield=True):
            await self._history.mark_answered(call_id, live.answered_at)
        return call_id

    def ice(self, device: Device, p: IceCandidateIn) -> None:
        """Relayed only between the two devices of the call (to every ringing callee
        device until one answers; a callee's early candidates wait for its answer)."""
        live = self._find(device, p.call_id)
        s = live.session
        frame = self._candidate(live, device.user_id, p.candidate)
        if device == live.caller:
            if live.callee is not None:
                self._router.send_to(live.callee.user_id, live.callee.connection_id, frame)
            else:
                self._router.publish([s.callee_id], frame)
        elif device.user_id == s.callee_id and live.callee is None:
            if len(live.early_candidates) < MAX_EARLY_CANDIDATES:
                live.early_candidates.append((device.connection_id, p.candidate))
        elif device == live.callee:
            self._router.send_to(live.caller.user_id, live.caller.connection_id, frame)
        else:
            raise Conflict("this device is not in the call", code="not_in_call")

    async def reject(self, device: Device, p: CallReasonIn) -> None:
        live = self._find(device, p.call_id)
        live.session.reject(device.user_id, p.reason, now=trio.current_time())
        await self._finish(live, by=device)

    async def end(self, device: Device, p: CallReasonIn) -> None:
        live = self._find(device, p.call_id)
        live.session.end(device.user_id, p.reason, now=trio.current_time())
        await self._finish(live, by=device)

    # ------------------------------------------------------------------ legs

    async def run_leg(self, call_id: str, device: Device, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A device's part in the call, run in its connection's nursery until the call is
        over. The caller's leg rings until the deadline (then: missed). Cancelled (the socket
        closed): the call ends for the other side, history written (shielded, bounded)."""
        live = self._calls.get(call_id)
        task_status.started()
        if live is None:
            return  # ended before the leg began
        s = live.session
        try:
            if device == live.caller:
                with trio.move_on_at(s.ring_deadline):
                    await live.ringing_over.wait()
                if s.timeout(now=trio.current_time()):
                    await self._finish(live, by=None)
            await live.over.wait()
        finally:
            if not live.over.is_set() and s.drop(device.user_id, now=trio.current_time()):
                with trio.move_on_after(self._record_deadline, shield=True):
                    await self._finish(live, by=device)

    # ------------------------------------------------------------------ inside

    def _find(self, device: Device, call_id: str) -> LiveCall:
        live = self._calls.get(_call_id(call_id))
        if live is None or not live.session.involves(device.user_id):
            raise NotFound("call not found (or already over)", code="call_not_found")
        return live

    async def _callee_of(self, caller_id: str, p: CallOfferIn) -> tuple[str, str | None]:
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

    @staticmethod
    def _candidate(live: LiveCall, sender: str, candidate: Any) -> Frame:
        return Frame(IceCandidateOut(call_id=live.session.id, candidate=candidate,
                                     sender=sender))

    async def _finish(self, live: LiveCall, *, by: Device | None,
                      kept_call_id: str | None = None) -> None:
        """The session reached a final state: record it, tell every device not `by`, and
        let the legs return."""
        s = live.session
        self._calls.pop(s.id, None)
        for uid in (s.caller_id, s.callee_id):
            if self._by_user.get(uid) is live:
                del self._by_user[uid]
        live.ringing_over.set()
        live.over.set()
        # history first, so whoever is told the call is over can already read it there
        await self._history.finish_call(s.id, status=s.status.value, end_reason=s.end_reason,
                                        answered_at=live.answered_at, ended_at=utcnow())
        rejected = s.status in (CallStatus.REJECTED, CallStatus.BUSY)
        reason, status = s.end_reason, s.status.value
        if by != live.caller:
            cls = CallRejectOut if rejected else CallOver
            self._router.send_to(live.caller.user_id, live.caller.connection_id, Frame(cls(
                call_id=s.id, reason=reason, status=status, kept_call_id=kept_call_id)))
        to_callee = Frame(CallOver(call_id=s.id, reason=reason, status=status,
                                   kept_call_id=kept_call_id))
        if live.callee is not None:
            if by != live.callee:
                self._router.send_to(live.callee.user_id, live.callee.connection_id, to_callee)
        else:  # still ringing on every device of the callee
            self._router.publish([s.callee_id], to_callee,
                                 exclude=by.connection_id if by is not None else None)

    async def _record(self, s: CallSession, started: datetime, *, final: bool = False) -> None:
        await self._history.record_call(CallRecord(
            id=s.id, conversation_id=s.conversation_id, caller_id=s.caller_id,
            callee_id=s.callee_id, media=s.media, status=s.status.value, end_reason=None,
            started_at=started,
        ))
        if final:
            await self._history.finish_call(s.id, status=s.status.value,
                                            end_reason=s.end_reason, answered_at=None,
                                            ended_at=utcnow())

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
