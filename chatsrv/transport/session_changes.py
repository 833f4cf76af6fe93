"""The message-change frames of a WebSocket Session (edit_message, delete_message,
reaction; issue 14): each goes to one ChangeService method, with the Session as `origin`
and the frame's `ref`, so this connection gets the result as the reply to its frame.

Written as the Session's methods (`self` is the Session) and made its methods by
assignment in its class body (`_edit_message = session_changes.edit_message`), so its
dispatch table holds these functions as it held the methods: no extra call per frame.
Cancelled with the connection; the service's ChatErrors (NotFound, Forbidden, Invalid,
Conflict) go up to the reader, which sends an `error` frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatsrv.protocol import frames as f

if TYPE_CHECKING:
    from chatsrv.transport.session import Session


async def edit_message(self: Session, frame: f.EditMessage) -> None:
    p = frame.payload
    await self._deps.changes.edit(self.user_id, p.message_id, p.content, origin=self,
                                  ref=frame.ref)


async def delete_message(self: Session, frame: f.DeleteMessage) -> None:
    await self._deps.changes.delete(self.user_id, frame.payload.message_id, origin=self,
                                    ref=frame.ref)


async def reaction(self: Session, frame: f.Reaction) -> None:
    p = frame.payload
    await self._deps.changes.react(self.user_id, p.message_id, p.emoji, p.add,
                                   origin=self, ref=frame.ref)
