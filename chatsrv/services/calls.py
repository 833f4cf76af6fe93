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
from datetime import datetime
from typing import Any

import trio

from chatsrv.domain.calls import CallSession, CallStatus
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
from chatsrv.protocol.frames import (
    CallAnswerIn,
    CallOfferIn,
    CallOfferOut,
    CallOver,
    CallReasonIn,
    CallRejectOut,
    CallRinging,
    Frame,
    IceCandidateIn,
)
from chatsrv.services.call_nodes import CallNodes
from chatsrv.services.call_state import LiveCall, Offered, RemoteCall

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _call_id(value: str) -> str:
    """Client-chosen call ids are accepted when short and plain (e.g. a UUID, "call_123")."""
    if not CALL_ID.match(value):
        raise Invalid("call_id must be 1-64 letters, digits or _.:-", field="call_id")
    return value


class CallService(CallNodes):
    """Calls placed, answered, relayed and ended by the devices of this node's connections
    (see the module doc), and the call history and ICE servers for REST."""

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

    # ------------------------------------------------------------------ inside

    async def _owner_of(self, device: Device, call_id: str) -> str:
        remote = self._remote.get(call_id)
        if remote is not None:
            return remote.owner
        owner = await self._history.call_owner(call_id)
        if owner is None or owner == self._instance:
            raise NotFound("call not found (or already over)", code="call_not_found")
        return owner

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
