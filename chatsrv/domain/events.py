"""Events sent to clients. An event is encoded once, however many connections receive it."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import msgspec

from chatsrv.domain.model import Message, iso

_encoder = msgspec.json.Encoder()


class Event:
    """A server -> client frame `{"type", "payload"}`.

    `droppable` events (typing) are the first to go when a connection's outbox is full;
    anything else that does not fit evicts the connection (it will resync).
    """

    __slots__ = ("__dict__", "droppable", "payload", "ref", "type")

    def __init__(self, type: str, payload: Any, *, droppable: bool = False,
                 ref: str | int | None = None) -> None:
        self.type = type
        self.payload = payload
        self.droppable = droppable
        self.ref = ref

    @classmethod
    def from_text(cls, type: str, text: str, *, droppable: bool = False) -> Event:
        """An event encoded elsewhere (another node): `.text` is `text`, sent as is.
        Its payload is not decoded (None): such events only go out to connections."""
        event = cls(type, None, droppable=droppable)
        event.__dict__["text"] = text  # fills the cached_property
        return event

    @cached_property
    def text(self) -> str:
        frame: dict[str, Any] = {"type": self.type, "payload": self.payload}
        if self.ref is not None:
            frame["ref"] = self.ref
        return _encoder.encode(frame).decode()

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {self.payload!r})"


def message_payload(m: Message) -> dict[str, Any]:
    """The seed's new_message fields plus seq and client_msg_id."""
    return {
        "id": m.id, "conversation_id": m.conversation_id, "seq": m.seq,
        "sender_id": m.sender_id, "content": m.content, "message_type": m.message_type,
        "client_msg_id": m.client_msg_id, "created_at": iso(m.created_at),
    }
