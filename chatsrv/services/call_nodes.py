"""The calls of one node and their halves on other nodes (services/calls.py has the whole
story): what a node keeps of its calls, how an answer, an ICE candidate or the end of a
call is applied to one owned here and told to every device, and the call signals between
nodes (an owner's and devices' halves of calls across nodes, nodes lost, blocks made on
any node). `CallService` (calls.py) adds the public operations on top."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import trio

from chatsrv.domain.calls import TERMINAL, CallSession, CallStatus
from chatsrv.domain.errors import ChatError, Conflict, NotFound
from chatsrv.domain.model import CallRecord, CallSignal, Device, utcnow
from chatsrv.domain.ports import CallBus, CallLog, Directory, Router, Store
from chatsrv.protocol.frames import (
    CallAnsweredElsewhere,
    CallAnswerOut,
    CallOver,
    CallRejectOut,
    Frame,
    IceCandidateOut,
)
from chatsrv.protocol.render import render_error
from chatsrv.services.call_state import LiveCall, RemoteCall, Ringing
from chatsrv.services.privacy import PrivacyCache

log = logging.getLogger(__name__)

MAX_EARLY_CANDIDATES = 64  # callee ICE sent before its answer, replayed once it answers


class CallNodes:
    """The calls owned here and this node's part in calls owned elsewhere: their state, how
    a decision is applied and told, and the signals between nodes."""

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

    # ------------------------------------------------------------------ applied here

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

    @staticmethod
    def _check_involved(live: LiveCall, device: Device) -> None:
        if not live.session.involves(device.user_id):
            raise NotFound("call not found (or already over)", code="call_not_found")

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
