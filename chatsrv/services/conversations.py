"""Conversations: create (1:1 idempotent per pair, or group), list, read, membership."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from chatsrv.domain.errors import Forbidden, Invalid, NotFound
from chatsrv.domain.model import (
    Conversation,
    ConversationSummary,
    ConversationType,
    ConversationView,
    Role,
    User,
    new_id,
    parse_id,
    utcnow,
)
from chatsrv.domain.ports import Router, Store
from chatsrv.domain.receipts import unread
from chatsrv.protocol.frames import (
    ConversationUpdated,
    Frame,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
)
from chatsrv.services.changes import ChangeService
from chatsrv.services.membership import MembershipCache
from chatsrv.services.privacy import PrivacyCache, shown_conversation

Statuses = Callable[[Sequence[User]], Awaitable[dict[str, str | None]]]
# the users as a viewer may see them, and their statuses (PresenceService.seen)
Seen = Callable[..., Awaitable[tuple[dict[str, User], dict[str, str | None]]]]


class ConversationService:
    def __init__(self, store: Store, router: Router, members: MembershipCache, *,
                 statuses: Statuses, max_group_members: int,
                 changes: ChangeService | None = None,
                 privacy: PrivacyCache | None = None, seen: Seen | None = None) -> None:
        self._changes = changes  # last messages with their reactions (issue 14)
        self._store = store
        # blocks and privacy settings (None: no rules, as in bare service tests)
        self._privacy = privacy
        self._seen = seen
        self._router = router
        self._members = members
        self._statuses = statuses  # presence of members (they share the conversation)
        self._max_group_members = max_group_members

    async def overview(self, user_id: str) -> list[ConversationView]:
        """My conversations, most recent activity first, with members' profiles."""
        summaries = await self._with_reactions(
            user_id, await self._store.list_conversations(user_id))
        users = await self._profiles({m.user_id for s in summaries
                                      for m in s.conversation.members})
        users, statuses = await self._shown(user_id, users)
        views = []
        for s in summaries:
            conv = await self._marks(s.conversation, user_id, users)
            views.append(ConversationView(conv, users, statuses, replace(s, conversation=conv)))
        return views

    async def view(self, user_id: str, conversation_id: str) -> ConversationView:
        return await self._view(await self.get(user_id, conversation_id), user_id)

    async def _view(self, conv: Conversation, user_id: str) -> ConversationView:
        """The conversation as `user_id` (a member) sees it: the same shape as in
        `overview`, last message and unread count included (one shape per field)."""
        users, statuses = await self._shown(
            user_id, await self._profiles({m.user_id for m in conv.members}))
        return ConversationView(await self._marks(conv, user_id, users), users, statuses,
                                await self._summary(conv, user_id))

    async def _shown(self, user_id: str, users: dict[str, User]
                     ) -> tuple[dict[str, User], dict[str, str | None]]:
        """Members' profiles and statuses as `user_id` may see them (privacy)."""
        if self._seen is None:
            return users, await self._statuses(list(users.values()))
        return await self._seen(list(users.values()), viewer=user_id, members=True)

    async def _marks(self, conv: Conversation, user_id: str,
                     users: dict[str, User]) -> Conversation:
        if self._privacy is None:
            return conv
        return shown_conversation(conv, await self._privacy.of(user_id), user_id, users)

    async def _summary(self, conv: Conversation, user_id: str) -> ConversationSummary:
        me = conv.member(user_id)
        last = (await self._store.list_messages(conv.id, limit=1)
                if conv.last_seq else [])
        [summary] = await self._with_reactions(user_id, [ConversationSummary(
            conv, last[0] if last else None,
            unread(conv.last_seq, me.read_seq if me else conv.last_seq))])
        return summary

    async def _with_reactions(self, user_id: str,
                              summaries: list[ConversationSummary]) -> list[ConversationSummary]:
        """The last messages as `user_id` sees them: with their reactions."""
        lasts = [s.last_message for s in summaries if s.last_message is not None]
        if self._changes is None or not lasts:
            return summaries
        seen = {m.id: m for m in await self._changes.decorate(user_id, lasts)}
        return [replace(s, last_message=seen[s.last_message.id])
                if s.last_message is not None else s for s in summaries]

    async def _profiles(self, user_ids: set[str]) -> dict[str, User]:
        return {u.id: u for u in await self._store.get_users(sorted(user_ids))}

    async def create(self, user_id: str, *, type: str, member_ids: Sequence[str],
                     name: str | None = None,
                     admin_ids: Sequence[str] = ()) -> tuple[ConversationView, bool]:
        """Returns (conversation, created). Raises Invalid for bad input or unknown users."""
        try:
            kind = ConversationType(type)
        except ValueError:
            raise Invalid("type must be 'one_to_one' or 'group'", field="type") from None
        others = list(dict.fromkeys(parse_id(m, "member_ids") for m in member_ids))
        others = [m for m in others if m != user_id]
        if kind is ConversationType.ONE_TO_ONE:
            if len(others) != 1:
                raise Invalid("one_to_one needs exactly one other member", field="member_ids")
            name = None
            direct_key = ":".join(sorted((user_id, others[0])))
            members = [(user_id, Role.MEMBER), (others[0], Role.MEMBER)]
        else:
            name = _group_name(name)
            if len(others) + 1 > self._max_group_members:
                raise Invalid(f"a group has at most {self._max_group_members} members",
                              field="member_ids")
            admins = {parse_id(a, "admin_ids") for a in admin_ids} | {user_id}
            direct_key = None
            members = [(user_id, Role.ADMIN)] + [
                (m, Role.ADMIN if m in admins else Role.MEMBER) for m in others
            ]
        found = await self._store.get_users(others)
        if len(found) != len(others):
            missing = sorted(set(others) - {u.id for u in found})
            raise Invalid("unknown user id(s)", code="unknown_user", field="member_ids",
                          user_ids=missing)
        if kind is ConversationType.ONE_TO_ONE and self._privacy is not None and \
                await self._privacy.between(user_id, others[0]):
            raise Forbidden("there is a block between you and this user", code="blocked")
        conv, created = await self._store.create_conversation(
            conversation_id=new_id(), type=kind, name=name, created_by=user_id,
            members=members, direct_key=direct_key, created_at=utcnow(),
        )
        return await self._view(conv, user_id), created

    async def get(self, user_id: str, conversation_id: str) -> Conversation:
        """Raises NotFound for a conversation that does not exist or is not the user's
        (outsiders cannot tell the difference)."""
        conv = await self._store.get_conversation(parse_id(conversation_id, "conversation_id"))
        if conv is None or conv.member(user_id) is None:
            raise NotFound("conversation not found")
        return conv

    async def add_members(self, user_id: str, conversation_id: str,
                          member_ids: Sequence[str]) -> ConversationView:
        conv = await self._admin_group(user_id, conversation_id)
        ids = list(dict.fromkeys(parse_id(m, "member_ids") for m in member_ids))
        if not ids:
            raise Invalid("member_ids must not be empty", field="member_ids")
        if len(conv.members) + len(ids) > self._max_group_members:
            raise Invalid(f"a group has at most {self._max_group_members} members",
                          field="member_ids")
        found = await self._store.get_users(ids)
        if len(found) != len(ids):
            missing = sorted(set(ids) - {u.id for u in found})
            raise Invalid("unknown user id(s)", code="unknown_user", field="member_ids",
                          user_ids=missing)
        added = await self._store.add_members(conv.id, [(m, Role.MEMBER) for m in ids],
                                              at=utcnow())
        await self._members.changed(conv.id)
        updated = await self.get(user_id, conv.id)
        if added:
            self._router.publish(
                [m.user_id for m in updated.members],
                Frame(MembersAdded(conversation_id=conv.id, user_ids=added, by=user_id)),
            )
        return await self._view(updated, user_id)

    async def remove_members(self, user_id: str, conversation_id: str,
                             member_ids: Sequence[str]) -> None:
        for member_id in member_ids:
            await self.remove_member(user_id, conversation_id, member_id)

    async def remove_member(self, user_id: str, conversation_id: str, member_id: str) -> None:
        """Admins remove anyone; any member may remove themselves (leave)."""
        member_id = parse_id(member_id, "user_id")
        conv = await self.get(user_id, conversation_id)
        if conv.type is not ConversationType.GROUP:
            raise Invalid("members of a one_to_one conversation cannot change")
        me = conv.member(user_id)
        assert me is not None
        if member_id != user_id and me.role is not Role.ADMIN:
            raise Forbidden("only group admins can remove members")
        if conv.member(member_id) is None:
            raise NotFound("not a member of this conversation")
        _, heir = await self._store.remove_member(conv.id, member_id)
        await self._members.changed(conv.id)
        everyone = [m.user_id for m in conv.members]
        self._router.publish(everyone, Frame(MemberRemoved(
            conversation_id=conv.id, user_id=member_id, by=user_id)))
        if heir is not None:  # the last admin left: the longest-standing member leads now
            self._router.publish(everyone, Frame(MemberRoleChanged(
                conversation_id=conv.id, user_id=heir, role=Role.ADMIN.value)))

    async def rename(self, user_id: str, conversation_id: str, name: str) -> ConversationView:
        """A group's new name (admins): `conversation_updated` to every member. Raises
        NotFound (not mine), Invalid (a one_to_one, a bad name), Forbidden (not an admin)."""
        conv = await self._admin_group(user_id, conversation_id,
                                       one_to_one="a one_to_one conversation has no name",
                                       not_admin="only group admins can rename the group")
        name = _group_name(name)
        await self._store.rename_conversation(conv.id, name)
        updated = await self.get(user_id, conv.id)
        self._router.publish([m.user_id for m in updated.members], Frame(ConversationUpdated(
            conversation_id=conv.id, name=name, by=user_id)))
        return await self._view(updated, user_id)

    async def _admin_group(
            self, user_id: str, conversation_id: str, *,
            one_to_one: str = "members of a one_to_one conversation cannot change",
            not_admin: str = "only group admins can add members") -> Conversation:
        conv = await self.get(user_id, conversation_id)
        if conv.type is not ConversationType.GROUP:
            raise Invalid(one_to_one)
        me = conv.member(user_id)
        if me is None or me.role is not Role.ADMIN:
            raise Forbidden(not_admin)
        return conv


def _group_name(name: str | None) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("a group needs a name of 1-100 characters", field="name")
    return name
