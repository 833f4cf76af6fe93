"""The call frames of a WebSocket Session (call_offer, call_answer, ice_candidate,
call_reject, call_end): each goes to one CallService method; an offer that rings, and an
answer, then run this device's call leg in the connection's nursery (`start_leg`), so the
leg ends with the socket.

Written as the Session's methods (`self` is the Session) and made its methods by
assignment in its class body (`_call_offer = session_calls.call_offer`), so its dispatch
table holds these functions as it held the methods: no extra call per frame. Cancelled with
the connection; the service's ChatErrors go up to the reader, which sends an `error` frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatsrv.protocol import frames as f

if TYPE_CHECKING:
    from chatsrv.transport.session import Session


async def call_offer(self: Session, frame: f.CallOffer) -> None:
    offered = await self._deps.calls.offer(self.device, frame.payload)
    self.send_nowait(f.Frame(offered.reply, ref=frame.ref))
    if offered.ringing:
        await self._start_leg(offered.call_id)


async def call_answer(self: Session, frame: f.CallAnswer) -> None:
    await self._start_leg(await self._deps.calls.answer(self.device, frame.payload,
                                                        frame.ref))


async def start_leg(self: Session, call_id: str) -> None:
    assert self._nursery is not None
    await self._nursery.start(self._deps.calls.run_leg, call_id, self.device)


async def ice_candidate(self: Session, frame: f.IceCandidate) -> None:
    await self._deps.calls.ice(self.device, frame.payload, frame.ref)


async def call_reject(self: Session, frame: f.CallReject) -> None:
    await self._deps.calls.reject(self.device, frame.payload, frame.ref)


async def call_end(self: Session, frame: f.CallEnd) -> None:
    await self._deps.calls.end(self.device, frame.payload, frame.ref)
