// How one message shows its wave-2 state (DESIGN §7): the quoted message it replies to,
// @mentions highlighted, "edited", "This message was deleted", reaction chips, and its menu
// (react, reply, edit, delete). Text only through text nodes.

import { QUICK_REACTIONS, deleteMessage, excerpt, react } from './changes.js';
import { startEdit, startReply } from './composer.js';
import { closePopover, confirmDialog, menuList, showPopover } from './menu.js';
import { jumpTo } from './search.js';

let C = null;

export function install(ctx) { C = ctx; }

// Usernames (lower case) of the conversation's members -> user id.
function memberNames(conv) {
  const out = new Map();
  for (const uid of conv.members.keys()) {
    const name = C.S.users.get(uid)?.username;
    if (name) out.set(name.toLowerCase(), uid);
  }
  return out;
}

const MENTION = /(^|[^A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{3,32})/g;

// The content with the mentions of members as <span class="mention">: only when the server
// listed them in `mentions` (a message still being sent has no list yet: members then).
export function contentNodes(conv, m) {
  const text = m.content || '';
  const names = memberNames(conv);
  const listed = Array.isArray(m.mentions) ? new Set(m.mentions) : null;
  const out = [];
  let at = 0;
  for (const hit of text.matchAll(MENTION)) {
    let name = hit[2];
    while (name.length > 3 && !names.has(name.toLowerCase()) && /[.-]$/.test(name)) name = name.slice(0, -1);
    const uid = names.get(name.toLowerCase());
    if (!uid || (listed && !listed.has(uid))) continue;
    const start = hit.index + hit[1].length;
    if (start > at) out.push(document.createTextNode(text.slice(at, start)));
    out.push(C.el('span', { class: `mention${uid === C.me() ? ' to-me' : ''}`, 'data-user-id': uid,
                            text: `@${name}` }));
    at = start + name.length + 1;
  }
  if (at < text.length) out.push(document.createTextNode(text.slice(at)));
  return out;
}

export const mentionsMe = (m) => Array.isArray(m.mentions) && m.mentions.includes(C.me());

function replyQuote(conv, m) {
  const orig = conv.msgs.get(m.reply_to);
  return C.el('button', {
    type: 'button', class: 'reply-quote', 'data-reply-to': m.reply_to, title: 'Show the message replied to',
    onclick: (e) => { e.stopPropagation(); jumpTo(conv.id, m.reply_to, orig?.seq); },
  }, C.el('span', { class: 'reply-who', text: orig ? C.userName(orig.sender_id) : 'Reply to' }),
  C.el('span', { class: 'reply-text', text: excerpt(orig) }));
}

function reactionChips(m) {
  const entries = Object.entries(m.reactions || {}).filter(([, r]) => r && r.count > 0);
  if (!entries.length) return null;
  return C.el('div', { class: 'reactions' }, ...entries.map(([emoji, r]) => C.el('button', {
    type: 'button', class: `reaction${r.me ? ' own' : ''}`, 'data-emoji': emoji, 'aria-pressed': String(Boolean(r.me)),
    title: r.me ? 'Remove your reaction' : 'Add this reaction',
    onclick: () => react(m, emoji, !r.me),
  }, C.el('span', { class: 'reaction-emoji', text: emoji }), C.el('span', { class: 'reaction-count', text: String(r.count) }))));
}

function canDelete(conv, m) {
  return m.sender_id === C.me() || (conv.type === 'group' && C.isAdmin(conv));
}

function openMenu(conv, m, anchor) {
  const picker = C.el('div', { class: 'react-picker', role: 'group', 'aria-label': 'React' },
    ...QUICK_REACTIONS.map((emoji) => {
      const mine = Boolean(m.reactions?.[emoji]?.me);
      return C.el('button', {
        type: 'button', class: `react-pick${mine ? ' own' : ''}`, 'data-emoji': emoji, 'aria-pressed': String(mine),
        title: mine ? 'Remove your reaction' : 'React',
        onclick: () => { closePopover(); react(m, emoji, !mine); },
      }, emoji);
    }));
  const mine = m.sender_id === C.me();
  const items = menuList(C.el, C.icon, [
    { label: 'Reply', icon: 'reply', data: 'reply', action: () => startReply(conv, m) },
    mine && (m.message_type || 'text') === 'text' ? { label: 'Edit', icon: 'edit', data: 'edit', action: () => startEdit(conv, m) } : null,
    canDelete(conv, m) ? { label: 'Delete', icon: 'trash', data: 'delete', danger: true, action: () => askDelete(conv, m) } : null,
  ]);
  showPopover(anchor, C.el('div', { class: 'msg-menu', 'data-message-id': m.id }, picker, items));
}

async function askDelete(conv, m) {
  const mine = m.sender_id === C.me();
  const ok = await confirmDialog(C.el, {
    title: 'Delete message?', yes: 'Delete', danger: true,
    text: mine ? 'It will be deleted for everyone in this conversation.'
      : `This deletes ${C.userName(m.sender_id)}'s message for everyone in the group.`,
  });
  if (ok) deleteMessage(m);
}

export function view(conv, m, out) {
  if (m.deleted) {
    out.cls += ' deleted';
    out.replace = C.el('div', { class: 'body deleted-body' }, C.icon('trash'), C.el('span', { text: 'This message was deleted' }));
    return;
  }
  if (mentionsMe(m) && m.sender_id !== C.me()) out.cls += ' mentions-me';
  if (m.reply_to) out.before.unshift(replyQuote(conv, m));
  if (m.content) out.body = C.el('div', { class: 'body' }, ...contentNodes(conv, m));
  const chips = reactionChips(m);
  if (chips) out.after.push(chips);
  if (m.edited_at) out.meta.push(C.el('span', { class: 'edited', title: `Edited ${new Date(m.edited_at).toLocaleString()}`, text: 'edited' }));
  if (m.id && !m.pending && !m.failed) {
    out.menu = C.el('button', {
      type: 'button', class: 'ghost icon-btn msg-menu-btn', title: 'Message actions', 'aria-label': 'Message actions',
      onclick: (e) => { e.stopPropagation(); openMenu(conv, m, e.currentTarget); },
    }, C.icon('more'));
  }
}

// A conversation's unread mentions of me: the server's count from `ready` while my read
// position has not moved since, else the loaded messages above my read position.
const readyMentions = new Map(); // cid -> {n, read_seq}

export function onReady(p) {
  readyMentions.clear();
  for (const [cid, info] of Object.entries(p.conversations || {})) {
    if (typeof info.mentions_unread === 'number') {
      readyMentions.set(cid, { n: info.mentions_unread, read: C.S.convs.get(cid)?.members.get(C.me())?.read_seq || 0 });
    }
  }
}

export function rowBadge(conv) {
  const read = conv.members.get(C.me())?.read_seq || 0;
  let n = 0;
  for (const m of conv.msgs.values()) if (m.seq > read && !m.deleted && mentionsMe(m)) n++;
  const r = readyMentions.get(conv.id);
  if (r && r.read >= read) n = Math.max(n, r.n);
  return n ? C.el('span', { class: 'badge mention-badge', title: `${n} unread mention${n === 1 ? '' : 's'}` }, C.icon('at')) : null;
}
