"""What the call service keeps of a call while it lasts (services/calls.py): the calls owned
here, the calls of other nodes ringing or carried here, and the answer to an offer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from chatsrv.domain.calls import CallSession
from chatsrv.domain.model import Device
from chatsrv.protocol.frames import Out


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
