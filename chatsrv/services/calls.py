"""WebRTC call signalling: offer → ring every callee device → first answer wins → ICE → end,
the same on one node or across nodes. Media never touches the server.

Ownership. A call belongs to the node of its caller's connection (`LiveCall`, around the
pure state machine domain/calls.py). Its users are *claimed* for it in storage (CallLog
claims: one row per user, atomic), so busy and glare are decided cluster-wide; a claim of a
node instance that is no longer alive is stale and released. Devices are addressed by
(user, connection, node): frames go to them through the Router, which crosses nodes.

Devices on other nodes. A callee device on another node acts through its own node: answer,
ice, reject, end and "left" (its socket closed) travel to the owner as call signals over the
ordered node link (the CallBus port); the owner decides and answers with frames, and tells
the device's node "over" when that device's part ends. That node keeps a `RemoteCall` for
the device's leg meanwhile.

Legs. Each device that takes part runs a leg, a task its connection's Session starts in its
own nursery (`await nursery.start(calls.run_leg, ...)`): the caller's rings until the
deadline (the ring timeout is its `move_on_at`), then lives until the call is over; the
answering device's lives until the call is over. Nobody cancels another task's scope: state
changes set events the legs wait on; a leg cancelled because its socket closed ends the
call for the other side in its `finally`. A node that dies ends its calls: the other
nodes hear it (`node_lost`) within NODE_TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from chatsrv.domain.calls import TERMINAL, CallSession, CallStatus
from chatsrv.domain.errors import ChatError, Conflict, Invalid, NotFound
from chatsrv.domain.model import (
    CallClaim,
    CallRecord,
    CallSignal,
    ConversationType,
    Device,
    new_id,
    parse_id,
    utcnow,
)
from chatsrv.domain.ports import CallBus, CallLog, Directory, Router, Store
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
from chatsrv.protocol.render import render_error
from chatsrv.services.privacy import PrivacyCache

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
    """A call owned by this node."""

    session: CallSession
    caller: Device
    callee: Device | None = None  # the device that answered
    answered_at: datetime | None = None
    # set once ringing is over (answered or ended): the caller's leg stops waiting
    ringing_over: trio.Event = field(default_factory=trio.Event)
    over: trio.Event = field(default_factory=trio.Event)  # every leg returns
    early_candidates: list[tuple[str, Any]] = field(default_factory=list)
    # other nodes told the call rings there ("ring"); told "rung" when ringing is over
    rung: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Ringing:
    """A call owned by another node ringing the callee's devices here (until `until`): if
    its owner dies meanwhile, this node ends it for them."""

    owner: str
    callee_id: str
    until: float


@dataclass(eq=False)
class RemoteCall:
    """A call owned by another node in which devices of this node take part."""

    owner: str
    # connection -> (its device, set when its part is over)
    legs: dict[str, tuple[Device, trio.Event]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Offered:
    """The answer to an offer: `reply` for the caller (call_ringing, or call_end /
    call_reject when it ended at once); `ringing`: the caller's leg must run."""

    call_id: str
    reply: Out
    ringing: bool


class CallService:
    def __init__(self, store: Store, history: CallLog, router: Router, directory: Directory,
                 bus: CallBus, signals: trio.MemoryReceiveChannel[CallSignal], *,
                 instance: str, ring_timeout: float, stun_urls: tuple[str, ...],
                 turn_urls: tuple[str, ...], turn_secret: str, turn_ttl: float,
                 record_deadline: float, privacy: PrivacyCache | None = None) -> None:
        self._store = store
        # blocks (None: no rules, as in bare service tests); users whose blocks changed,
        # for the calls owned here between them to end (see _watch_blocks)
        self._privacy = privacy
        self._reblocked: set[str] = set()
        self._reblocked_wakeup = trio.lowlevel.ParkingLot()
        if privacy is not None:
            privacy.on_changed(self._blocks_changed_nowait)
        self._history = history
        self._router = router
        self._directory = directory
        self._bus = bus
        self._signals = signals
        self._instance = instance
        self._ring_timeout = ring_timeout
        self._stun_urls = stun_urls
        self._turn_urls = turn_urls
        self._turn_secret = turn_secret
        self._turn_ttl = turn_ttl
        # how long a shielded history write may take while a leg tears down
        self._record_deadline = record_deadline
        self._calls: dict[str, LiveCall] = {}
        self._remote: dict[str, RemoteCall] = {}
        self._ringing: dict[str, Ringing] = {}  # calls of other nodes ringing devices here
        router.on_node_lost(self._node_lost_nowait)
        self._lost: list[str] = []
        self._lost_wakeup = trio.lowlevel.ParkingLot()

    def _here(self, device: Device) -> Device:
        """The device as other nodes must know it: with this node's instance."""
        return device if device.node else Device(device.user_id, device.connection_id,
                                                 self._instance)

    # ------------------------------------------------------------------ signalling

    async def offer(self, caller: Device, p: CallOfferIn) -> Offered:
        """Place a call, owned here. Raises Invalid, NotFound (no shared conversation,
        someone else's call id), Conflict (already in a call, the caller's own call id
        reused)."""
        caller = self._here(caller)
        callee_id, conversation_id = await self._callee_of(caller.user_id, p)
        call_id = _call_id(p.call_id) if p.call_id else new_id()
        if p.call_id:
            earlier = await self._history.get_call(call_id)
            if earlier is not None:
                if caller.user_id in (earlier.caller_id, earlier.callee_id):
                    raise Conflict("call_id was used for an earlier call", code="call_exists")
                raise NotFound("call not found", code="not_found")
        if self._privacy is not None and await self._privacy.between(caller.user_id, callee_id):
            # decided here, on the caller's node, before anything is claimed, recorded or
            # sent: the callee (on any node) hears nothing, and has no history of it
            return Offered(call_id, CallRejectOut(call_id=call_id, reason="blocked",
                                                  status=CallStatus.REJECTED.value), False)
        now = trio.current_time()
        session = CallSession(
            id=call_id, caller_id=caller.user_id, callee_id=callee_id,
            conversation_id=conversation_id, media=p.media, started_at=now,
            ring_deadline=now + self._ring_timeout, caller_session=caller.connection_id,
        )
        started = utcnow()
        claim = CallClaim(call_id, caller.user_id, callee_id, self._instance)
        standing = await self._claim(claim)
        if standing:
            glare = next((c for c in standing if c.caller_id == callee_id
                          and c.callee_id == caller.user_id and not c.answered), None)
            if glare is not None and all(c.call_id == glare.call_id for c in standing):
                # Both called each other: the call placed by the smaller user id survives,
                # the same on both sides.
                if callee_id < caller.user_id:
                    session.end(caller.user_id, "glare", now=now)
                    await self._record(session, started, final=True)
                    return Offered(call_id, CallOver(
                        call_id=call_id, reason="glare", status=session.status.value,
                        kept_call_id=glare.call_id), False)
                if await self._history.claim_call(claim, replacing=glare.call_id):
                    raise Conflict("you are already in a call", code="already_in_call")
                await self._end_for_glare(glare, kept=call_id)
            elif any(caller.user_id in (c.caller_id, c.callee_id) for c in standing):
                raise Conflict("you are already in a call", code="already_in_call")
            else:
                session.reject(callee_id, "busy", now=now)
                await self._record(session, started, final=True)
                return Offered(call_id, CallRejectOut(call_id=call_id, reason="busy",
                                                      status=session.status.value), False)
        devices = self._router.reach(callee_id)
        if devices == 0:
            session.unreachable(now=now)
            await self._history.release_call(call_id)
            await self._record(session, started, final=True)
            return Offered(call_id, CallOver(call_id=call_id, reason="offline",
                                             status=session.status.value), False)
        live = LiveCall(session=session, caller=caller)
        self._calls[call_id] = live
        try:
            await self._record(session, started)
        except ChatError:
            del self._calls[call_id]
            await self._history.release_call(call_id)
            raise
        self._router.publish([callee_id], Frame(CallOfferOut(
            call_id=call_id, caller_id=caller.user_id, conversation_id=conversation_id,
            media=p.media, offer=p.offer)))
        # the callee's other nodes learn that the call rings there, after the offer on the
        # same ordered link: should this node die, they end it for the ringing devices
        live.rung = self._router.nodes_of(callee_id)
        for node in live.rung:
            self._bus.signal(node, CallSignal(call_id, "ring", Device(callee_id, "",
                                                                      self._instance)))
        return Offered(call_id, CallRinging(call_id=call_id, callee_id=callee_id,
                                            devices=devices), True)

    async def _claim(self, claim: CallClaim) -> list[Any]:
        """Claim the call's users; claims of node instances no longer alive are released
        and the claim tried again (once per stale owner)."""
        standing = await self._history.claim_call(claim)
        for owner in {c.owner for c in standing}:
            if owner != self._instance and not await self._directory.instance_alive(owner):
                log.info("releasing call claims of gone instance %s", owner)
                await self._release_owner(owner)
                standing = await self._history.claim_call(claim)
        return standing

    async def _end_for_glare(self, losing: CallClaim, *, kept: str) -> None:
        """The losing call of a glare ends (its owner tells both sides)."""
        live = self._calls.get(losing.call_id)
        if live is not None:
            # as if its caller hung up while ringing (cancelled): call_end to both sides
            live.session.end(losing.caller_id, "glare", now=trio.current_time())
            await self._finish(live, by=None, kept_call_id=kept)
        else:
            self._bus.signal(losing.owner, CallSignal(
                losing.call_id, "glare", Device(losing.callee_id, "", self._instance),
                payload=kept))

    async def answer(self, device: Device, p: CallAnswerIn, ref: Any = None) -> str:
        """The first callee device to answer wins; its leg must run next (returns the call
        id). Raises NotFound, Conflict (answered elsewhere, over). For a call owned by
        another node, the answer goes there; a refusal arrives as an error frame."""
        device = self._here(device)
        call_id = _call_id(p.call_id)
        live = self._calls.get(call_id)
        if live is None:
            owner = await self._owner_of(device, call_id)
            self._remote.setdefault(call_id, RemoteCall(owner)).legs.setdefault(
                device.connection_id, (device, trio.Event()))
            self._bus.signal(owner, CallSignal(call_id, "answer", device, p.answer, ref))
            return call_id
        await self._answer(live, device, p.answer)
        return call_id

    async def _answer(self, live: LiveCall, device: Device, answer: Any) -> None:
        self._check_involved(live, device)
        live.session.answer(device.user_id, device.connection_id, now=trio.current_time())
        live.callee = device
        live.answered_at = utcnow()
        self._ringing_over(live)
        call_id = live.session.id
        caller = live.caller
        self._send(caller, Frame(CallAnswerOut(call_id=call_id, answer=answer,
                                               callee_id=device.user_id)))
        self._router.publish([device.user_id], Frame(CallAnsweredElsewhere(call_id=call_id)),
                             exclude=device.connection_id)
        for connection_id, candidate in live.early_candidates:
            if connection_id == device.connection_id:
                self._send(caller, self._candidate(live, device.user_id, candidate))
        live.early_candidates.clear()
        with trio.move_on_after(self._record_deadline, shield=True):
            await self._history.mark_answered(call_id, live.answered_at)
            await self._history.mark_claim_answered(call_id)

    async def ice(self, device: Device, p: IceCandidateIn, ref: Any = None) -> None:
        """Relayed only between the two devices of the call (to every ringing callee
        device until one answers; a callee's early candidates wait for its answer)."""
        device = self._here(device)
        call_id = _call_id(p.call_id)
        live = self._calls.get(call_id)
        if live is None:
            owner = await self._owner_of(device, call_id)
            self._bus.signal(owner, CallSignal(call_id, "ice", device, p.candidate, ref))
            return
        self._ice(live, device, p.candidate)

    def _ice(self, live: LiveCall, device: Device, candidate: Any) -> None:
        self._check_involved(live, device)
        s = live.session
        frame = self._candidate(live, device.user_id, candidate)
        if device == live.caller:
            if live.callee is not None:
                self._send(live.callee, frame)
            else:
                self._router.publish([s.callee_id], frame)
        elif device.user_id == s.callee_id and live.callee is None:
            if len(live.early_candidates) < MAX_EARLY_CANDIDATES:
                live.early_candidates.append((device.connection_id, candidate))
        elif device == live.callee:
            self._send(live.caller, frame)
        else:
            raise Conflict("this device is not in the call", code="not_in_call")

    async def reject(self, device: Device, p: CallReasonIn, ref: Any = None) -> None:
        await self._act(device, p, "reject", ref)

    async def end(self, device: Device, p: CallReasonIn, ref: Any = None) -> None:
        await self._act(device, p, "end", ref)

    async def _act(self, device: Device, p: CallReasonIn, action: str, ref: Any) -> None:
        device = self._here(device)
        call_id = _call_id(p.call_id)
        live = self._calls.get(call_id)
        if live is None:
            owner = await self._owner_of(device, call_id)
            self._bus.signal(owner, CallSignal(call_id, action, device, p.reason, ref))
            return
        self._check_involved(live, device)
        if action == "reject":
            live.session.reject(device.user_id, p.reason, now=trio.current_time())
        else:
            live.session.end(device.user_id, p.reason, now=trio.current_time())
        await self._finish(live, by=device)

    # ------------------------------------------------------------------ legs

    async def run_leg(self, call_id: str, device: Device, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A device's part in the call, run in its connection's nursery until it is over.
        The caller's leg rings until the deadline (then: missed). Cancelled (the socket
        closed): the call ends for the other side, history written (shielded, bounded)."""
        device = self._here(device)
        live = self._calls.get(call_id)
        remote = self._remote.get(call_id)
        task_status.started()
        if live is not None:
            await self._local_leg(live, device)
        elif remote is not None and device.connection_id in remote.legs:
            await self._remote_leg(call_id, remote, device)

    async def _local_leg(self, live: LiveCall, device: Device) -> None:
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

    async def _remote_leg(self, call_id: str, remote: RemoteCall, device: Device) -> None:
        _, over = remote.legs[device.connection_id]
        try:
            await over.wait()
        finally:
            if not over.is_set():  # the socket closed: tell the owner
                self._bus.signal(remote.owner, CallSignal(call_id, "left", device))
            remote.legs.pop(device.connection_id, None)
            if not remote.legs:
                self._remote.pop(call_id, None)

    # ------------------------------------------------------------------ between nodes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: handle the call signals other nodes send (an owner's and devices'
        halves of calls across nodes) and the nodes lost. Run supervised; a bad signal is
        answered with an error frame to its device, never raised."""
        # claims a previous run of this instance left (a single node restarted)
        await self._release_owner(self._instance)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_lost)
            nursery.start_soon(self._watch_blocks)
            async for signal in self._signals:
                try:
                    await self._on_signal(signal)
                except ChatError as exc:
                    d = signal.device
                    self._send(d, Frame(render_error(exc, signal.ref), ref=signal.ref))
                    if signal.action == "answer":  # refused: that device takes no part
                        self._bus.signal(d.node, CallSignal(signal.call_id, "over", d))

    async def _on_signal(self, signal: CallSignal) -> None:
        d, action, call_id = signal.device, signal.action, signal.call_id
        if action == "over":
            remote = self._remote.get(call_id)
            leg = remote.legs.get(d.connection_id) if remote is not None else None
            if leg is not None:
                leg[1].set()
            return
        if action == "ring":
            now = trio.current_time()
            for stale in [c for c, r in self._ringing.items() if r.until <= now]:
                del self._ringing[stale]
            self._ringing[call_id] = Ringing(d.node, d.user_id, now + self._ring_timeout)
            return
        if action == "rung":
            self._ringing.pop(call_id, None)
            return
        live = self._calls.get(call_id)
        if live is None:
            if action in ("left", "glare"):
                return
            raise NotFound("call not found (or already over)", code="call_not_found")
        if action == "answer":
            await self._answer(live, d, signal.payload)
        elif action == "ice":
            self._ice(live, d, signal.payload)
        elif action == "reject":
            self._check_involved(live, d)
            live.session.reject(d.user_id, signal.payload, now=trio.current_time())
            await self._finish(live, by=d)
        elif action == "end":
            self._check_involved(live, d)
            live.session.end(d.user_id, signal.payload, now=trio.current_time())
            await self._finish(live, by=d)
        elif action == "left":
            if live.callee == d and live.session.drop(d.user_id, now=trio.current_time()):
                await self._finish(live, by=d)
        elif action == "glare":
            live.session.end(live.session.caller_id, "glare", now=trio.current_time())
            await self._finish(live, by=None, kept_call_id=signal.payload)

    def _node_lost_nowait(self, instance: str) -> None:
        self._lost.append(instance)
        self._lost_wakeup.unpark_all()

    async def _watch_lost(self) -> None:
        while True:
            while not self._lost:
                await self._lost_wakeup.park()
            lost, self._lost = self._lost, []
            for instance in lost:
                await self._node_lost(instance)

    def _blocks_changed_nowait(self, user_ids: Sequence[str]) -> None:
        if any(live.session.involves(u) for live in self._calls.values() for u in user_ids):
            self._reblocked.update(user_ids)
            self._reblocked_wakeup.unpark_all()

    async def _watch_blocks(self) -> None:
        """Forever: a call owned here whose two users got a block between them (made on
        any node) ends for both sides with reason `blocked`."""
        while True:
            while not self._reblocked:
                await self._reblocked_wakeup.park()
            users, self._reblocked = self._reblocked, set()
            for live in list(self._calls.values()):
                s = live.session
                if s.over or (s.caller_id not in users and s.callee_id not in users) or \
                        self._privacy is None:
                    continue
                try:
                    if await self._privacy.between(s.caller_id, s.callee_id):
                        s.end(s.caller_id, "blocked", now=trio.current_time())
                        await self._finish(live, by=None)
                except ChatError as exc:  # storage down: the call goes on, as before it
                    log.warning("call %s not ended for a block: %s", s.id, exc.message)

    async def _node_lost(self, instance: str) -> None:
        """A node died: its claims are released and its calls' history finished first (so
        whoever is told can read it and call again); then calls it owned end for the
        devices here (in a call, or ringing), and calls owned here end for its devices."""
        try:
            await self._release_owner(instance)
        finally:
            await self._end_calls_of_lost(instance)

    async def _end_calls_of_lost(self, instance: str) -> None:
        for call_id, remote in list(self._remote.items()):
            if remote.owner != instance:
                continue
            for device, over in list(remote.legs.values()):
                over.set()
                self._send(device, Frame(CallOver(call_id=call_id, reason="disconnected",
                                                  status=CallStatus.ENDED.value)))
        now = trio.current_time()
        for call_id, ringing in list(self._ringing.items()):
            if ringing.owner != instance:
                continue
            del self._ringing[call_id]
            if ringing.until > now:
                frame = Frame(CallOver(call_id=call_id, reason="disconnected",
                                       status=CallStatus.FAILED.value))
                for sub in self._router.local(ringing.callee_id):
                    sub.send_nowait(frame)
        for live in list(self._calls.values()):
            callee = live.callee
            if callee is not None and callee.node == instance and \
                    live.session.drop(callee.user_id, now=now):
                await self._finish(live, by=callee)

    async def _release_owner(self, instance: str) -> None:
        """Release the claims of a node instance that is gone, and finish the history of
        its calls (a call it rang: failed; one it carried: ended), as nobody else will.
        Every node that hears of the loss may do it: the outcome is the same."""
        for call_id in await self._history.release_owner(instance):
            record = await self._history.get_call(call_id)
            if record is None or CallStatus(record.status) in TERMINAL:
                continue
            answered = record.status == CallStatus.ANSWERED.value
            await self._history.finish_call(
                call_id, status=(CallStatus.ENDED if answered else CallStatus.FAILED).value,
                end_reason="disconnected", answered_at=record.answered_at, ended_at=utcnow())

    # ------------------------------------------------------------------ inside

    def _send(self, device: Device, frame: Frame) -> None:
        node = "" if device.node == self._instance else device.node
        self._router.send_to(device.user_id, device.connection_id, frame, node=node)

    async def _owner_of(self, device: Device, call_id: str) -> str:
        remote = self._remote.get(call_id)
        if remote is not None:
            return remote.owner
        owner = await self._history.call_owner(call_id)
        if owner is None or owner == self._instance:
            raise NotFound("call not found (or already over)", code="call_not_found")
        return owner

    @staticmethod
    def _check_involved(live: LiveCall, device: Device) -> None:
        if not live.session.involves(device.user_id):
            raise NotFound("call not found (or already over)", code="call_not_found")

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
        """The session reached a final state: record it, release its claims, tell every
        device not `by`, and let the legs return (here and on other nodes)."""
        s = live.session
        first = self._calls.pop(s.id, None) is not None
        self._ringing_over(live)
        live.over.set()
        if not first:
            return  # finished already (by the other side, at the same moment)
        # history and claims first: whoever is told the call is over can read it in the
        # history and call again at once (after glare the winner holds the claims now)
        try:
            await self._history.finish_call(s.id, status=s.status.value,
                                            end_reason=s.end_reason,
                                            answered_at=live.answered_at, ended_at=utcnow())
            if kept_call_id is None:
                await self._history.release_call(s.id)
        finally:
            self._notify_over(live, by=by, kept_call_id=kept_call_id)

    def _ringing_over(self, live: LiveCall) -> None:
        """Ringing is over (answered or ended): the caller's leg stops waiting; the other
        nodes that rang forget the call."""
        live.ringing_over.set()
        rung, live.rung = live.rung, frozenset()
        for node in rung:
            self._bus.signal(node, CallSignal(live.session.id, "rung", live.caller))

    def _notify_over(self, live: LiveCall, *, by: Device | None,
                     kept_call_id: str | None) -> None:
        s = live.session
        rejected = s.status in (CallStatus.REJECTED, CallStatus.BUSY)
        reason, status = s.end_reason, s.status.value
        if by != live.caller:
            cls = CallRejectOut if rejected else CallOver
            self._send(live.caller, Frame(cls(call_id=s.id, reason=reason, status=status,
                                              kept_call_id=kept_call_id)))
        to_callee = Frame(CallOver(call_id=s.id, reason=reason, status=status,
                                   kept_call_id=kept_call_id))
        callee = live.callee
        if callee is not None:
            if by != callee:
                self._send(callee, to_callee)
            if callee.node != self._instance:
                self._bus.signal(callee.node, CallSignal(s.id, "over", callee))
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
