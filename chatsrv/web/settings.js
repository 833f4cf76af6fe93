// Settings (DESIGN §7 "Blocking and privacy", "Offline push"): a panel with the
// notifications opt-in, the privacy switches (PATCH /api/users/me presence_visible,
// read_receipts_visible) and the people I blocked (GET /api/blocks, unblock); and a menu in
// the conversation header to mute it (PUT/DELETE /api/conversations/{id}/mute) and, in a
// 1:1, to block or unblock the other person (PUT/DELETE /api/users/{id}/block).
//
// In a 1:1 with someone I blocked the composer gives way to a note with an Unblock button;
// in groups their messages are collapsed behind a "Show" button.

import { closePopover, confirmDialog, menuList, showPopover } from './menu.js';
import * as notify from './notify.js';

let C = null;
const blocked = new Map();   // user id -> {user_id, username?, display_name?}
const muted = new Map();     // conversation id -> until (ISO string) | null (until unmuted)
const revealed = new Set();  // ids of blocked users' messages the user chose to see

const MUTE_CHOICES = [
  { label: 'Mute for 1 hour', ms: 3600e3 },
  { label: 'Mute for 8 hours', ms: 8 * 3600e3 },
  { label: 'Mute for a week', ms: 7 * 86400e3 },
  { label: 'Mute until I unmute', ms: null },
];

export function install(ctx) {
  C = ctx;
  notify.install(ctx);
  C.$('settings-btn').addEventListener('click', openSettings);
  C.$('settings-close').addEventListener('click', () => C.$('settings-dialog').close());
  C.$('push-toggle').addEventListener('click', togglePush);
  for (const [id, field] of [['presence-visible', 'presence_visible'], ['receipts-visible', 'read_receipts_visible']]) {
    C.$(id).addEventListener('change', (e) => setPrivacy(field, e.target));
  }
  C.$('conv-menu-btn').addEventListener('click', (e) => openConvMenu(e.currentTarget));
  C.$('blocked-unblock').addEventListener('click', () => {
    const conv = C.S.convs.get(C.S.current);
    if (conv) unblock(C.otherId(conv));
  });
}

export const isBlocked = (uid) => blocked.has(uid);

export function start() { loadBlocks(); loadMutes(); notify.start(); }

// ready.blocked: the users I blocked, as of this connection (a block made on another device
// while this one was away included)
export function onReady(p) {
  if (!Array.isArray(p.blocked)) return;
  const now = new Set(p.blocked);
  for (const uid of [...blocked.keys()]) if (!now.has(uid)) blocked.delete(uid);
  for (const uid of now) if (!blocked.has(uid)) { blocked.set(uid, { user_id: uid }); C.ensureUser(uid); }
  C.invalidate('header', 'messages');
}

// GET /api/push/mutes: {mutes: [{conversation_id, muted, until}]}
async function loadMutes() {
  try {
    const r = await C.api('GET', '/api/push/mutes');
    muted.clear();
    for (const x of r?.mutes || []) if (x.conversation_id && x.muted !== false) muted.set(x.conversation_id, x.until ?? null);
  } catch (err) {
    if (err.status !== 404) console.warn('mutes unavailable', err);
  }
  C.invalidate('header');
}

export function signOut() {
  blocked.clear();
  muted.clear();
  revealed.clear();
  if (C.$('settings-dialog').open) C.$('settings-dialog').close();
}

export const beforeLogout = () => notify.beforeLogout();

// GET /api/conversations (and /{id}) may say whether a conversation is muted.
export function mergeConv(conv, c) {
  if ('muted_until' in c || 'muted' in c) {
    const until = c.muted_until ?? null;
    const on = c.muted ?? Boolean(until);
    if (on && (!until || Date.parse(until) > Date.now())) muted.set(conv.id, until);
    else muted.delete(conv.id);
  }
}

const isMuted = (cid) => {
  if (!muted.has(cid)) return false;
  const until = muted.get(cid);
  return !until || Date.parse(until) > Date.now();
};

async function loadBlocks() {
  try {
    const r = await C.api('GET', '/api/blocks');
    const items = r?.blocks ?? r?.users ?? r?.blocked ?? [];
    blocked.clear();
    for (const x of items) {
      const u = x.user && typeof x.user === 'object' ? x.user : x;
      const uid = x.user_id ?? u.id ?? x.blocked_id;
      if (!uid) continue;
      blocked.set(uid, x);
      C.rememberUser({ id: uid, username: u.username, display_name: u.display_name });
      C.ensureUser(uid);
    }
  } catch (err) {
    if (err.status !== 404) console.warn('block list unavailable', err);
  }
  C.invalidate('header', 'messages');
  if (C.$('settings-dialog').open) renderBlocked();
}

// ---- the header: muted mark, conversation menu, blocked note instead of the composer

export function header(conv) {
  const mutedNow = isMuted(conv.id);
  C.$('conv-muted').hidden = !mutedNow;
  const peer = conv.type === 'one_to_one' ? C.otherId(conv) : null;
  const isBlockedPeer = Boolean(peer && peer !== C.me() && blocked.has(peer));
  C.$('blocked-note').hidden = !isBlockedPeer;
  C.$('composer').hidden = isBlockedPeer;
  if (isBlockedPeer) C.$('call-buttons').hidden = true; // the server refuses the call anyway
  if (isBlockedPeer) C.$('blocked-text').textContent = `You blocked ${C.userName(peer)}. Unblock to send messages.`;
}

function openConvMenu(anchor) {
  const conv = C.S.convs.get(C.S.current);
  if (!conv) return;
  const peer = conv.type === 'one_to_one' ? C.otherId(conv) : null;
  const items = isMuted(conv.id)
    ? [{ label: 'Unmute notifications', icon: 'bell', data: 'unmute', action: () => setMute(conv, false) }]
    : MUTE_CHOICES.map((c) => ({ label: c.label, icon: 'bell-off', data: `mute-${c.ms ?? 'forever'}`,
                                 action: () => setMute(conv, true, c.ms) }));
  if (peer && peer !== C.me()) {
    items.push(blocked.has(peer)
      ? { label: `Unblock ${C.userName(peer)}`, icon: 'block', data: 'unblock', action: () => unblock(peer) }
      : { label: `Block ${C.userName(peer)}`, icon: 'block', data: 'block', danger: true, action: () => block(peer) });
  }
  showPopover(anchor, menuList(C.el, C.icon, items));
}

async function setMute(conv, on, ms = null) {
  try {
    if (on) {
      const until = ms ? new Date(Date.now() + ms).toISOString() : null;
      await C.api('PUT', `/api/conversations/${conv.id}/mute`, until ? { until } : {});
      muted.set(conv.id, until);
      C.toast(until ? `Muted until ${new Date(until).toLocaleString()}` : 'Muted', 'info');
    } else {
      await C.api('DELETE', `/api/conversations/${conv.id}/mute`);
      muted.delete(conv.id);
    }
  } catch (err) { C.report(err); }
  C.invalidate('header', 'sidebar');
}

async function block(uid) {
  const name = C.userName(uid);
  const ok = await confirmDialog(C.el, {
    title: `Block ${name}?`, yes: 'Block', danger: true,
    text: `${name} will not be able to message or call you, and neither of you will see the other online. `
      + 'Groups you share stay shared.',
  });
  if (!ok) return;
  try {
    await C.api('PUT', `/api/users/${encodeURIComponent(uid)}/block`);
    blocked.set(uid, { user_id: uid });
  } catch (err) { C.report(err); }
  C.invalidate('header', 'messages', 'sidebar');
  if (C.$('settings-dialog').open) renderBlocked();
}

async function unblock(uid) {
  try {
    await C.api('DELETE', `/api/users/${encodeURIComponent(uid)}/block`);
    blocked.delete(uid);
  } catch (err) { C.report(err); }
  C.invalidate('header', 'messages', 'sidebar');
  if (C.$('settings-dialog').open) renderBlocked();
}

// ---- blocked users' messages in groups: collapsed until shown

export function view(conv, m, out) {
  const flagged = m.sender_blocked ?? m.blocked ?? blocked.has(m.sender_id);
  if (conv.type !== 'group' || m.sender_id === C.me() || !flagged || revealed.has(m.id) || m.deleted) return;
  out.cls += ' collapsed';
  out.replace = C.el('div', { class: 'body collapsed-body' }, C.icon('block'),
    C.el('span', { text: 'Message from someone you blocked' }),
    C.el('button', { type: 'button', class: 'ghost small', onclick: () => { revealed.add(m.id); C.invalidate('messages'); } }, 'Show'));
}

// ---- the settings panel

async function openSettings() {
  closePopover();
  C.$('settings-dialog').showModal();
  renderPush();
  renderPrivacy(C.S.auth?.user || {});
  renderBlocked();
  try {
    const u = await C.api('GET', '/api/users/me');
    C.saveAuth({ ...C.S.auth, user: { ...C.S.auth.user, ...u } });
    renderPrivacy(u);
  } catch (err) { C.report(err); }
  loadBlocks();
}

function renderPrivacy(u) {
  C.$('presence-visible').checked = u.presence_visible !== false;
  C.$('receipts-visible').checked = u.read_receipts_visible !== false;
}

async function setPrivacy(field, box) {
  box.disabled = true;
  try {
    const u = await C.api('PATCH', '/api/users/me', { [field]: box.checked });
    C.saveAuth({ ...C.S.auth, user: { ...C.S.auth.user, ...(u || { [field]: box.checked }) } });
    if (u) renderPrivacy(u);
  } catch (err) {
    box.checked = !box.checked;
    C.report(err);
  } finally { box.disabled = false; }
}

function renderBlocked() {
  const list = C.$('blocked-list');
  const rows = [...blocked.keys()].map((uid) => {
    const u = C.S.users.get(uid) || {};
    return C.el('li', { class: 'member', 'data-user-id': uid },
      C.avatar(C.userName(uid), null),
      C.el('span', { class: 'row-main' },
        C.el('span', { class: 'row-name', text: C.userName(uid) }),
        C.el('span', { class: 'row-sub', text: u.username ? `@${u.username}` : '' })),
      C.el('button', { type: 'button', class: 'small', 'data-action': 'unblock', onclick: () => unblock(uid) }, 'Unblock'));
  });
  list.replaceChildren(...(rows.length ? rows : [C.el('li', { class: 'muted', text: 'You have not blocked anyone.' })]));
}

const PUSH_TEXT = {
  unsupported: 'This browser cannot show notifications.',
  denied: 'Notifications are blocked for this site in the browser settings.',
  on: 'On: you get a notification for new messages while chatsrv is closed.',
  off: 'Off: get a notification for new messages while chatsrv is closed.',
};

function renderPush(message) {
  const st = notify.state();
  C.$('push-status').textContent = message || PUSH_TEXT[st];
  C.$('push-status').dataset.state = st;
  const btn = C.$('push-toggle');
  btn.hidden = st === 'unsupported' || st === 'denied';
  btn.dataset.state = st;
  C.$('push-toggle-text').textContent = st === 'on' ? 'Turn off notifications' : 'Turn on notifications';
}

async function togglePush() {
  const btn = C.$('push-toggle');
  btn.disabled = true;
  try {
    if (notify.state() === 'on') await notify.disable();
    else { C.$('push-status').textContent = 'Turning on…'; await notify.enable(); }
    renderPush();
  } catch (err) {
    renderPush(`Could not turn on notifications: ${err.message}`);
    C.$('push-status').dataset.state = 'error';
  } finally { btn.disabled = false; }
}
