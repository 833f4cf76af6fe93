// chatsrv web client: one page, plain ES module, no framework and no build step.
// All state lives in `S`; the DOM is re-rendered from it in small batched passes.
// User-provided text only ever reaches the DOM through text nodes / textContent.
// UI state is drawn with inline SVG icons (icons.js), never with emoji glyphs.

import { hydrateIcons, icon } from './icons.js';
import { checkRegistration } from './rules.js';
import { installFeatures } from './features.js';

const $ = (id) => document.getElementById(id);
const AUTH_KEY = 'chatsrv.auth';
const PAGE = 50;

const S = {
  auth: readAuth(),           // {token, refresh_token, user}
  convs: new Map(),           // id -> conversation state (see ensureConv)
  users: new Map(),           // id -> {id, username, display_name, status, last_seen}
  current: null,              // open conversation id
  ws: null, wsReady: false, attempt: 0, reconnectTimer: 0, pingTimer: 0, lastFrame: 0,
  forceRefresh: false,
  sync: null,                 // {ref, since} while a sync is paging
  typingIn: new Map(),        // cid -> Map(uid -> expiry timer)
  typingOut: { cid: null, at: 0, idle: 0 },
  receipts: new Set(), receiptTimer: 0,
  call: null, cancelledOffer: 0,
  calls: new Map(),           // call id -> /api/calls record (history, and entries in the chat)
  callsTimer: 0,
  side: 'chats',              // sidebar tab: 'chats' | 'calls'
  details: false,             // group details panel open
  ice: { servers: null, expires: 0 },
  scrollToBottom: false,
};
const me = () => S.auth?.user?.id;

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k === 'style') node.style.cssText = v; // CSSOM: allowed by a CSP without 'unsafe-inline'
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c != null && c !== false) node.append(c);
  return node;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16)); // non-secure contexts lack randomUUID
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function debounce(fn, ms) {
  let t = 0;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function toDate(ts) {
  if (ts == null || ts === '') return null;
  const d = typeof ts === 'number' ? new Date(ts < 1e12 ? ts * 1000 : ts) : new Date(ts);
  return Number.isNaN(d.getTime()) ? null : d;
}
const sameDay = (a, b) => a.toDateString() === b.toDateString();
const fmtTime = (d) => d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

function fmtShort(ts) {
  const d = toDate(ts);
  if (!d) return '';
  return sameDay(d, new Date()) ? fmtTime(d) : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function fmtLastSeen(ts) {
  const d = toDate(ts);
  if (!d) return 'offline';
  const mins = Math.floor((Date.now() - d.getTime()) / 60000);
  if (mins < 1) return 'last seen just now';
  if (mins < 60) return `last seen ${mins} min ago`;
  if (sameDay(d, new Date())) return `last seen today at ${fmtTime(d)}`;
  return `last seen ${d.toLocaleDateString()} ${fmtTime(d)}`;
}

function toast(text, kind = 'error') {
  const t = el('div', { class: `toast ${kind}`, role: 'status' }, String(text));
  $('toasts').append(t);
  setTimeout(() => t.remove(), 4500);
}
const report = (err) => { if (S.auth) toast(err?.message || err); };

// ------------------------------------------------------------------ auth + REST

function readAuth() {
  try { return JSON.parse(localStorage.getItem(AUTH_KEY)) || null; } catch { return null; }
}

function saveAuth(data) {
  S.auth = { token: data.token, refresh_token: data.refresh_token, user: data.user || S.auth?.user };
  localStorage.setItem(AUTH_KEY, JSON.stringify(S.auth));
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

let refreshing = null;
// One refresh at a time (refresh tokens rotate). Resolves true (refreshed), false (refused:
// sign in again) or null (network/server trouble: try again later).
function refreshAuth() {
  refreshing ??= (async () => {
    try {
      const stored = readAuth(); // another tab may have rotated the token already
      if (stored?.refresh_token && stored.refresh_token !== S.auth?.refresh_token) {
        S.auth = stored;
        return true;
      }
      const r = await fetch('/api/auth/refresh', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: S.auth?.refresh_token || '' }),
      });
      if (!r.ok) return r.status >= 500 ? null : false;
      saveAuth(await r.json());
      return true;
    } catch {
      return null;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function api(method, path, body, retry = true) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (S.auth?.token) headers.Authorization = `Bearer ${S.auth.token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network', 'Network error: server unreachable');
  }
  if (res.status === 401 && retry && S.auth && !path.startsWith('/api/auth/')) {
    const ok = await refreshAuth();
    if (ok) return api(method, path, body, false);
    if (ok === false) signOut('Your session has expired. Please sign in again.');
  }
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const e = data?.error || {};
    throw new ApiError(res.status, e.code || `http_${res.status}`, e.message || res.statusText || 'Request failed');
  }
  return data;
}

function tokenExpiringSoon() {
  try {
    const part = S.auth.token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)).exp * 1000 < Date.now() + 30000;
  } catch { return false; }
}

// ------------------------------------------------------------------ model

function ensureConv(id) {
  let c = S.convs.get(id);
  if (!c) {
    c = { id, type: null, name: null, last_seq: 0, last_message: null, created_at: null,
          members: new Map(), msgs: new Map(), pending: new Map(), loaded: false, hasMore: false };
    S.convs.set(id, c);
  }
  return c;
}

// A member's watermarks in a conversation (created on first sight).
function mark(conv, uid) {
  let m = conv.members.get(uid);
  if (!m) conv.members.set(uid, (m = { user_id: uid, role: 'member', delivered_seq: 0, read_seq: 0 }));
  return m;
}

function advance(conv, uid, delivered, read) {
  const m = mark(conv, uid);
  m.read_seq = Math.max(m.read_seq, read || 0);
  m.delivered_seq = Math.max(m.delivered_seq, delivered || 0, m.read_seq);
}

function rememberUser(u) {
  if (!u?.id) return;
  const old = S.users.get(u.id) || {};
  const merged = { ...old };
  for (const [k, v] of Object.entries(u)) if (v != null) merged[k] = v;
  S.users.set(u.id, merged);
}

const inflightUsers = new Map();
const missingUsers = new Set(); // lookups that failed: not retried on every render
function ensureUser(uid) {
  if (!uid || S.users.get(uid)?.display_name || missingUsers.has(uid)) return Promise.resolve();
  if (!inflightUsers.has(uid)) {
    inflightUsers.set(uid, api('GET', `/api/users/${encodeURIComponent(uid)}`)
      .then((u) => { rememberUser(u); invalidate('sidebar', 'header', 'messages'); })
      .catch(() => missingUsers.add(uid))
      .finally(() => inflightUsers.delete(uid)));
  }
  return inflightUsers.get(uid);
}

function userName(uid) {
  if (uid === me()) return 'You';
  const u = S.users.get(uid);
  return u?.display_name || u?.username || 'Unknown user';
}

const otherId = (conv) => [...conv.members.keys()].find((id) => id !== me()) || me();

function convName(conv) {
  if (conv.type === 'group') return conv.name || 'Group';
  const u = S.users.get(otherId(conv));
  return u?.display_name || u?.username || conv.name || 'Conversation';
}

function mergeConv(c) {
  const conv = ensureConv(c.id);
  conv.type = c.type;
  conv.name = c.name ?? null;
  conv.created_at = c.created_at || conv.created_at;
  conv.last_seq = Math.max(conv.last_seq, c.last_seq || 0);
  if (c.last_message && (!conv.last_message || c.last_message.seq > conv.last_message.seq)) conv.last_message = c.last_message;
  if (Array.isArray(c.members)) {
    const ids = new Set(c.members.map((m) => m.user_id));
    for (const id of conv.members.keys()) if (!ids.has(id)) conv.members.delete(id);
    for (const m of c.members) {
      advance(conv, m.user_id, m.delivered_seq, m.read_seq);
      mark(conv, m.user_id).role = m.role || 'member';
      if (m.display_name || m.username) {
        rememberUser({ id: m.user_id, username: m.username, display_name: m.display_name,
                       status: m.status, last_seen: m.last_seen });
      }
    }
  }
  if (typeof c.unread === 'number' && me()) advance(conv, me(), 0, conv.last_seq - c.unread);
  X.mergeConv(conv, c);
  return conv;
}

const seqs = (conv) => [...conv.msgs.values()].map((m) => m.seq);
const maxSeq = (conv) => Math.max(0, ...seqs(conv));
const minSeq = (conv) => (conv.msgs.size ? Math.min(...seqs(conv)) : 0);
const unreadOf = (conv) => Math.max(0, conv.last_seq - (conv.members.get(me())?.read_seq || 0));
const activity = (conv) => toDate(conv.last_message?.created_at || conv.created_at)?.getTime() || 0;

// Tick state of one of my messages: all other members must reach it (groups included).
function statusOf(conv, seq) {
  const others = [...conv.members.values()].filter((m) => m.user_id !== me());
  if (!others.length) return 'sent';
  if (others.every((m) => m.read_seq >= seq)) return 'read';
  if (others.every((m) => m.delivered_seq >= seq)) return 'delivered';
  return 'sent';
}

function addMessage(m) {
  if (!m?.id || !m.conversation_id) return;
  const known = S.convs.has(m.conversation_id);
  const conv = ensureConv(m.conversation_id);
  if (!known) reloadConversations();
  if (conv.msgs.has(m.id)) return;
  if (m.client_msg_id && m.sender_id === me()) conv.pending.delete(m.client_msg_id);
  conv.msgs.set(m.id, m);
  conv.last_seq = Math.max(conv.last_seq, m.seq);
  if (!conv.last_message || m.seq >= conv.last_message.seq) conv.last_message = m;
  if (m.sender_id === me()) {
    advance(conv, me(), m.seq, m.seq); // the server marks my own messages read for me
  } else {
    // The server moves a sender's watermarks to their new message without a
    // message_status for it (SENDER_READ in adapters/storage/messages.py): apply the same
    // rule here, or a reply sent before its read receipt leaves my earlier ticks unread.
    advance(conv, m.sender_id, m.seq, m.seq);
    setTyping(conv.id, m.sender_id, false);
    queueReceipt(conv.id);
  }
  invalidate('sidebar', conv.id === S.current && 'messages');
}

async function loadConversations() {
  const { conversations } = await api('GET', '/api/conversations');
  for (const c of conversations || []) mergeConv(c);
  for (const conv of S.convs.values()) if (conv.type === 'one_to_one') ensureUser(otherId(conv));
  invalidate('sidebar', 'header');
}
const reloadConversations = debounce(() => loadConversations().catch(report), 300);

async function loadHistory(conv, older = false) {
  const q = older ? `before_seq=${minSeq(conv)}&limit=${PAGE}` : `limit=${PAGE}`;
  const r = await api('GET', `/api/conversations/${conv.id}/messages?${q}`);
  for (const m of r.messages || []) addMessage(m);
  conv.hasMore = Boolean(r.has_more) && minSeq(conv) > 1;
  conv.loaded = true;
}

// ------------------------------------------------------------------ WebSocket

function send(type, payload, ref) {
  if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
  S.ws.send(JSON.stringify(ref ? { type, payload, ref } : { type, payload }));
  return true;
}

async function connect() {
  clearTimeout(S.reconnectTimer);
  if (!S.auth || S.ws) return;
  if (S.forceRefresh || tokenExpiringSoon()) {
    const ok = await refreshAuth();
    if (ok === false) return signOut('Your session has expired. Please sign in again.');
    S.forceRefresh = false;
    if (!S.auth || S.ws) return;
  }
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${proto}://${location.host}/api/ws?token=${encodeURIComponent(S.auth.token)}`);
  let opened = false;
  S.ws = ws;
  setConn('connecting');
  ws.onopen = () => { opened = true; S.lastFrame = Date.now(); };
  ws.onmessage = (ev) => {
    if (S.ws !== ws) return;
    S.lastFrame = Date.now();
    let frame;
    try { frame = JSON.parse(ev.data); } catch { return; }
    try { onFrame(frame); } catch (err) { console.error('frame handler failed', frame, err); }
  };
  ws.onclose = (ev) => {
    if (S.ws !== ws) return;
    S.ws = null;
    S.wsReady = false;
    S.sync = null;
    clearInterval(S.pingTimer);
    if (S.call) endCall('Call ended: connection lost');
    if (!S.auth) return;
    // A refused handshake (401) shows up as a close before open: refresh the token first.
    S.forceRefresh = S.forceRefresh || ev.code === 4401 || !opened;
    const delay = Math.min(30000, 1000 * 2 ** S.attempt++) * (0.8 + Math.random() * 0.4);
    setConn('offline', delay);
    invalidate('sidebar', 'header'); // others' presence is unknown until we are back
    S.reconnectTimer = setTimeout(connect, delay);
  };
}

function disconnect() {
  clearTimeout(S.reconnectTimer);
  clearInterval(S.pingTimer);
  const ws = S.ws;
  S.ws = null;
  S.wsReady = false;
  ws?.close(1000);
}

function setConn(state, delay) {
  const n = $('conn-status');
  n.className = `conn ${state}`;
  n.textContent = state === 'offline' ? `offline, retrying in ${Math.round(delay / 1000)} s` : state;
}

function onFrame({ type, payload: p = {}, ref }) {
  switch (type) {
    case 'ready': return onReady(p);
    case 'new_message': return addMessage(p);
    case 'message_ack': return onAck(p);
    case 'message_status': return onStatus(p);
    case 'typing': return setTyping(p.conversation_id, p.user_id, p.is_typing);
    case 'presence_update': return onPresence(p);
    case 'sync_result': return onSyncResult(p, ref);
    case 'members_added': return onMembersAdded(p);
    case 'member_removed': return onMemberRemoved(p);
    case 'conversation_updated': return onConversationUpdated(p); // not sent yet (rename hook)
    case 'error': return onError(p, ref ?? p.ref);
    case 'pong': return undefined;
    default:
      if (X.frames[type]) return X.frames[type](p, ref); // message changes (features.js)
      if (type?.startsWith('call_') || type === 'ice_candidate') onCallFrame(type, p, ref);
  }
  return undefined;
}

function onReady(p) {
  S.wsReady = true;
  S.attempt = 0;
  setConn('online');
  clearInterval(S.pingTimer);
  S.pingTimer = setInterval(() => {
    if (Date.now() - S.lastFrame > 60000) S.ws?.close(); // dead link: reconnect
    else send('ping', {}, uuid());
  }, 25000);
  const positions = p.conversations || {};
  const since = {};
  let unknown = false;
  for (const [cid, info] of Object.entries(positions)) {
    unknown ||= !S.convs.has(cid) || !S.convs.get(cid).type;
    const conv = ensureConv(cid);
    conv.last_seq = Math.max(conv.last_seq, info.last_seq || 0);
    const read = info.read_seq ?? (typeof info.unread === 'number' ? conv.last_seq - info.unread : 0);
    advance(conv, me(), info.delivered_seq, read);
    // Cached conversations resume from what we hold; the others from what reached a device
    // (bounded, older history is fetched on demand).
    const mine = conv.members.get(me());
    since[cid] = conv.loaded || conv.msgs.size ? maxSeq(conv)
      : Math.max(mine.delivered_seq, conv.last_seq - PAGE, 0);
  }
  for (const cid of [...S.convs.keys()]) {
    if (!(cid in positions)) {            // no longer a member
      S.convs.delete(cid);
      if (S.current === cid) S.current = null;
    }
  }
  if (unknown) reloadConversations();
  S.sync = { ref: uuid(), since };
  send('sync', { conversations: since, ...X.syncExtra() }, S.sync.ref);
  X.onReady(p);
  for (const conv of S.convs.values()) for (const pm of conv.pending.values()) if (!pm.failed) transmit(pm);
  if (S.current) queueReceipt(S.current);
  loadCalls(); // calls that ended while we were away
  invalidate('sidebar', 'header', 'messages', 'typing');
}

function onSyncResult(p, ref) {
  for (const m of p.messages || []) addMessage(m);
  X.onSyncResult(p);
  for (const [cid, marks] of Object.entries(p.watermarks || {})) {
    const conv = S.convs.get(cid);
    if (conv) for (const [uid, w] of Object.entries(marks)) advance(conv, uid, w.delivered_seq, w.read_seq);
  }
  invalidate('sidebar', 'messages');
  if (!S.sync || (ref && ref !== S.sync.ref)) return;
  const changes = X.syncMore(p); // {changes_since} while the changes come in pages too
  if ((!p.has_more || !p.messages?.length) && !changes) { S.sync = null; return; }
  const since = { ...S.sync.since };
  for (const m of p.messages || []) if (m.conversation_id in since) since[m.conversation_id] = Math.max(since[m.conversation_id], m.seq);
  S.sync = { ref: uuid(), since };
  send('sync', { conversations: since, ...changes }, S.sync.ref);
}

function onAck(p) {
  const conv = S.convs.get(p.conversation_id);
  const pm = conv?.pending.get(p.client_msg_id);
  if (!pm) return;
  conv.pending.delete(p.client_msg_id);
  addMessage({ ...pm.shown, id: p.id, conversation_id: conv.id, seq: p.seq, sender_id: me(), content: pm.content,
               message_type: 'text', client_msg_id: p.client_msg_id, created_at: p.created_at || pm.created_at });
  invalidate('messages');
}

function onStatus(p) {
  const conv = S.convs.get(p.conversation_id);
  if (!conv || !p.user_id) return;
  const seq = p.up_to_seq || 0;
  advance(conv, p.user_id, seq, p.status === 'read' ? seq : 0);
  invalidate('sidebar', p.conversation_id === S.current && 'messages');
}

function onPresence(p) {
  const u = { id: p.user_id, status: p.status };
  if (p.last_seen) u.last_seen = p.last_seen;
  else if (p.status === 'offline' && !('last_seen' in p)) u.last_seen = p.timestamp;
  rememberUser(u);
  // offline with last_seen null: hidden (presence_visible off, or a block): no "last seen"
  if (p.status === 'offline' && 'last_seen' in p && !p.last_seen) delete S.users.get(p.user_id).last_seen;
  invalidate('sidebar', 'header');
}

// Someone was added to a group: refresh its members; if it is me, the group is new to me.
function onMembersAdded(p) {
  const cid = p.conversation_id;
  if (!cid) return;
  if (!S.convs.get(cid)?.type || (p.user_ids || []).includes(me())) { reloadConversations(); return; }
  refreshConversation(cid);
}

function onMemberRemoved(p) {
  const conv = S.convs.get(p.conversation_id);
  if (!conv) return;
  if (p.user_id === me()) {
    forgetConversation(conv, p.by === me() ? `You left "${convName(conv)}"` : `You were removed from "${convName(conv)}"`);
    return;
  }
  conv.members.delete(p.user_id);
  invalidate('sidebar', 'header', 'details');
}

function onConversationUpdated(p) {
  const conv = S.convs.get(p.conversation_id || p.id);
  if (!conv) return;
  if ('name' in p) conv.name = p.name;
  invalidate('sidebar', 'header', 'details');
}

function forgetConversation(conv, message) {
  S.convs.delete(conv.id);
  S.typingIn.delete(conv.id);
  if (S.current === conv.id) closeConversation();
  if (message) toast(message, 'info');
  invalidate('sidebar');
}

async function refreshConversation(cid) {
  try {
    mergeConv(await api('GET', `/api/conversations/${cid}`));
  } catch (err) {
    if (err.status === 404) { const conv = S.convs.get(cid); if (conv) forgetConversation(conv); return; }
    report(err);
  }
  invalidate('sidebar', 'header', 'details', cid === S.current && 'messages');
}

function onError(p, ref) {
  if (X.onError(p, ref)) return undefined;
  for (const conv of S.convs.values()) {
    const pm = ref && conv.pending.get(ref);
    if (!pm) continue;
    if (p.code === 'rate_limited') setTimeout(() => conv.pending.has(ref) && transmit(pm), (p.retry_after || 1) * 1000);
    else { pm.failed = p.message || p.code; toast(`Message not sent: ${pm.failed}`); }
    invalidate('messages', 'sidebar');
    return;
  }
  if (S.call && ref && ref === S.call.ref) return endCall(`Call failed: ${p.message || p.code}`);
  if (S.sync && ref === S.sync.ref) S.sync = null;
  toast(p.message || p.code || 'Server error');
  return undefined;
}

// ------------------------------------------------------------------ typing + receipts

function setTyping(cid, uid, on) {
  if (!cid || !uid || uid === me()) return;
  let m = S.typingIn.get(cid);
  if (!m) S.typingIn.set(cid, (m = new Map()));
  clearTimeout(m.get(uid));
  m.delete(uid);
  if (on) m.set(uid, setTimeout(() => setTyping(cid, uid, false), 7000)); // fallback expiry
  invalidate('typing', 'sidebar');
}
const typers = (cid) => [...(S.typingIn.get(cid)?.keys() || [])];

function onComposerInput() {
  const t = S.typingOut;
  if (!S.current || !$('composer-input').value.trim()) { stopTyping(); return; }
  if (t.cid !== S.current) stopTyping();
  if ((t.cid !== S.current || Date.now() - t.at > 3000)
      && send('typing', { conversation_id: S.current, is_typing: true })) {
    t.cid = S.current; t.at = Date.now();
  }
  clearTimeout(t.idle);
  t.idle = setTimeout(stopTyping, 5000);
}

function stopTyping() {
  const t = S.typingOut;
  clearTimeout(t.idle);
  if (t.cid) send('typing', { conversation_id: t.cid, is_typing: false });
  t.cid = null; t.at = 0;
}

const isVisible = (cid) => cid === S.current && document.visibilityState === 'visible';

function queueReceipt(cid) {
  S.receipts.add(cid);
  S.receiptTimer ||= setTimeout(flushReceipts, 250);
}

function flushReceipts() {
  S.receiptTimer = 0;
  for (const cid of S.receipts) {
    const conv = S.convs.get(cid);
    if (!conv || !me()) continue;
    const top = maxSeq(conv);
    const mine = mark(conv, me());
    if (isVisible(cid)) {
      if (top > mine.read_seq && send('read_receipt', { conversation_id: cid, up_to_seq: top })) advance(conv, me(), top, top);
    } else if (top > mine.delivered_seq && send('delivery_receipt', { conversation_id: cid, up_to_seq: top })) {
      advance(conv, me(), top, 0);
    }
  }
  S.receipts.clear();
  invalidate('sidebar');
}

// ------------------------------------------------------------------ actions

function transmit(pm) {
  pm.failed = null;
  send('chat_message', { ...pm.extra, conversation_id: pm.conversation_id, content: pm.content,
                         message_type: 'text', client_msg_id: pm.client_msg_id }, pm.client_msg_id);
}

function sendMessage() {
  const input = $('composer-input');
  const content = input.value.trim();
  const conv = S.convs.get(S.current);
  if (!conv || X.beforeSend(conv, content)) return;
  const more = X.compose(conv); // reply_to, attachments (features.js)
  if (more.block) { toast(more.block, 'info'); return; }
  if (!content && !more.attachments) return;
  const id = uuid();
  const pm = { ...more.shown, client_msg_id: id, conversation_id: conv.id, content, sender_id: me(),
               created_at: new Date().toISOString(), pending: true, failed: null,
               extra: more.extra, shown: more.shown };
  X.afterSend(conv);
  conv.pending.set(id, pm);
  transmit(pm); // offline: stays pending and is sent (idempotently) after reconnect
  input.value = '';
  autosize();
  stopTyping();
  S.scrollToBottom = true;
  invalidate('messages', 'sidebar');
}

async function openConversation(cid) {
  const conv = S.convs.get(cid);
  if (!conv) return;
  if (S.typingOut.cid && S.typingOut.cid !== cid) stopTyping();
  if (cid !== S.current) {
    S.details = false;
    if (S.receiptTimer) { clearTimeout(S.receiptTimer); flushReceipts(); } // what was on screen was read
  }
  S.current = cid;
  S.scrollToBottom = true;
  document.body.classList.add('show-pane');
  $('composer-input').value = '';
  autosize();
  invalidate('sidebar', 'header', 'messages', 'typing');
  try {
    const [detail] = await Promise.all([
      api('GET', `/api/conversations/${cid}`),
      conv.loaded ? null : loadHistory(conv),
    ]);
    mergeConv(detail);
    if (conv.type === 'one_to_one') ensureUser(otherId(conv));
  } catch (err) { report(err); }
  if (S.current === cid) { S.scrollToBottom = true; queueReceipt(cid); }
  invalidate('header', 'messages');
  if (matchMedia('(min-width: 701px)').matches) $('composer-input').focus();
}

function closeConversation() {
  stopTyping();
  if (S.receiptTimer) { clearTimeout(S.receiptTimer); flushReceipts(); } // what was on screen was read
  S.current = null;
  S.details = false;
  document.body.classList.remove('show-pane');
  invalidate('sidebar', 'header', 'messages', 'typing');
}

async function loadOlder(conv) {
  const box = $('messages');
  const fromBottom = box.scrollHeight - box.scrollTop;
  try { await loadHistory(conv, true); } catch (err) { return report(err); }
  renderMessages();
  box.scrollTop = box.scrollHeight - fromBottom;
  return undefined;
}

async function searchUsers(q) {
  const r = await api('GET', `/api/users?q=${encodeURIComponent(q)}&limit=20`);
  for (const u of r.users || []) rememberUser(u);
  return (r.users || []).filter((u) => u.id !== me());
}

async function startDirect(uid) {
  try {
    const conv = mergeConv(await api('POST', '/api/conversations', { type: 'one_to_one', member_ids: [uid] }));
    $('search-input').value = '';
    $('search-results').hidden = true;
    invalidate('sidebar');
    openConversation(conv.id);
  } catch (err) { report(err); }
}

function userRow(u, onclick, label) {
  return el('li', {}, el('button', { type: 'button', class: 'row', onclick },
    avatar(u.display_name || u.username, u.status),
    el('span', { class: 'row-main' },
      el('span', { class: 'row-name', text: u.display_name || u.username }),
      el('span', { class: 'row-sub', text: `@${u.username}` })),
    label ? el('span', { class: 'row-action', text: label }) : null));
}

const runSearch = debounce(async () => {
  const q = $('search-input').value.trim();
  const list = $('search-results');
  if (!q) { list.hidden = true; return; }
  try {
    const users = await searchUsers(q);
    if ($('search-input').value.trim() !== q) return;
    list.replaceChildren(...(users.length ? users.map((u) => userRow(u, () => startDirect(u.id), 'Chat'))
      : [el('li', { class: 'muted', text: 'No one found' })]));
    list.hidden = false;
  } catch (err) { report(err); }
}, 250);

// New group dialog: name + people picked from search results.
const picked = new Map();
function renderPicked() {
  $('group-selected').replaceChildren(...[...picked.values()].map((u) => el('span', { class: 'chip' },
    u.display_name || u.username,
    el('button', { type: 'button', title: 'Remove', 'aria-label': `Remove ${u.display_name || u.username}`,
                   onclick: () => { picked.delete(u.id); renderPicked(); } }, icon('close')))));
}
const runGroupSearch = debounce(async () => {
  const q = $('group-search').value.trim();
  if (!q) { $('group-results').replaceChildren(); return; }
  try {
    const users = await searchUsers(q);
    $('group-results').replaceChildren(...users.map((u) => userRow(u, (e) => {
      picked.set(u.id, u);
      renderPicked();
      e.currentTarget.querySelector('.row-action').textContent = 'Added';
    }, picked.has(u.id) ? 'Added' : 'Add')));
  } catch (err) { $('group-error').textContent = err.message; }
}, 250);

async function createGroup(e) {
  e.preventDefault();
  const name = $('group-name').value.trim();
  if (!name) { $('group-error').textContent = 'Give the group a name.'; return; }
  if (!picked.size) { $('group-error').textContent = 'Add at least one person.'; return; }
  try {
    const conv = mergeConv(await api('POST', '/api/conversations', { type: 'group', name, member_ids: [...picked.keys()] }));
    $('group-dialog').close();
    openConversation(conv.id);
  } catch (err) { $('group-error').textContent = err.message; }
}

function openGroupDialog() {
  picked.clear();
  renderPicked();
  for (const id of ['group-name', 'group-search']) $(id).value = '';
  $('group-results').replaceChildren();
  $('group-error').textContent = '';
  $('group-dialog').showModal();
}

// ------------------------------------------------------------------ rendering

const dirty = new Set();
let renderQueued = false;
function invalidate(...parts) {
  for (const p of parts) if (p) dirty.add(p);
  if (!renderQueued) { renderQueued = true; setTimeout(flushRender, 0); }
}

function flushRender() {
  renderQueued = false;
  if (!S.auth) { dirty.clear(); return; }
  const d = new Set(dirty);
  dirty.clear();
  const conv = S.convs.get(S.current);
  $('empty-pane').hidden = Boolean(conv);
  $('conv-view').hidden = !conv;
  if (!conv) { document.body.classList.remove('show-pane'); X.noConversation(); }
  if (d.has('sidebar')) renderSidebar();
  const details = Boolean(conv && conv.type === 'group' && S.details);
  $('details').hidden = !details;
  document.body.classList.toggle('show-details', details);
  if (!conv) return;
  if (d.has('header')) renderHeader(conv);
  if (details && (d.has('details') || d.has('header'))) renderDetails(conv);
  if (d.has('messages')) renderMessages();
  if (d.has('typing')) renderTyping(conv);
}

function avatar(name, status) {
  const text = (name || '?').trim();
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
  const initials = text.split(/\s+/).slice(0, 2).map((w) => [...w][0] || '').join('').toUpperCase();
  return el('span', { class: 'avatar', style: `background:hsl(${h} 45% 55%)` }, initials,
    status ? el('span', { class: `dot ${status === 'online' ? 'online' : 'offline'}`, title: status }) : null);
}

function renderSidebar() {
  for (const b of document.querySelectorAll('[data-side]')) {
    b.classList.toggle('active', b.dataset.side === S.side);
    b.setAttribute('aria-selected', String(b.dataset.side === S.side));
  }
  $('conv-list').hidden = S.side !== 'chats';
  $('call-list').hidden = S.side !== 'calls';
  if (S.side === 'calls') { renderCallList(); return; }
  const convs = [...S.convs.values()].filter((c) => c.type).sort((a, b) => activity(b) - activity(a));
  $('conv-list').replaceChildren(...(convs.length ? convs.map(convItem)
    : [el('li', { class: 'muted', text: 'No conversations yet. Search for someone to start.' })]));
}

function renderCallList() {
  const calls = [...S.calls.values()].sort((a, b) => (toDate(b.started_at) || 0) - (toDate(a.started_at) || 0));
  $('call-list').replaceChildren(...(calls.length ? calls.map(callItem)
    : [el('li', { class: 'muted', text: 'No calls yet. Open a chat and press Call or Video.' })]));
}

function callItem(c) {
  const peer = callPeer(c);
  const u = S.users.get(peer);
  const d = describeCall(c);
  return el('li', {}, el('button', {
    type: 'button', class: `row call-row ${d.kind}`, 'data-call-id': c.id, 'data-status': c.status,
    onclick: () => openCallConversation(c),
  },
  avatar(userName(peer), u?.status),
  el('span', { class: 'row-main' },
    el('span', { class: 'row-top' },
      el('span', { class: 'row-name', text: userName(peer) }),
      el('span', { class: 'row-time', text: fmtShort(c.started_at) })),
    el('span', { class: `row-sub call-sub ${d.kind}` }, icon(d.icon), d.text))));
}

async function openCallConversation(c) {
  if (c.conversation_id && S.convs.get(c.conversation_id)?.type) { openConversation(c.conversation_id); return; }
  await startDirect(callPeer(c)); // idempotent: the existing 1:1 with that person
}

function convItem(conv) {
  const name = convName(conv);
  const unread = isVisible(conv.id) ? 0 : unreadOf(conv); // read receipt is on its way
  const typing = typers(conv.id).length > 0;
  const last = conv.last_message;
  const pending = [...conv.pending.values()].at(-1);
  let preview = 'No messages yet';
  let mark = null;
  if (typing) preview = 'typing…';
  else if (pending) {
    preview = `You: ${pending.content}`;
    mark = icon(pending.failed ? 'alert' : 'clock', { title: pending.failed ? 'Not sent' : 'Sending…', cls: 'preview-mark' });
  } else if (last) {
    const who = last.sender_id === me() ? 'You: ' : conv.type === 'group' ? `${userName(last.sender_id)}: ` : '';
    preview = who + (X.preview(last) ?? last.content);
  }
  const status = conv.type === 'one_to_one' && S.wsReady ? S.users.get(otherId(conv))?.status || 'offline' : null;
  return el('li', {}, el('button', {
    type: 'button', class: `row conv${conv.id === S.current ? ' active' : ''}${unread ? ' unread' : ''}`,
    onclick: () => openConversation(conv.id),
  },
  avatar(name, status),
  el('span', { class: 'row-main' },
    el('span', { class: 'row-top' },
      el('span', { class: 'row-name', text: name }),
      el('span', { class: 'row-time', text: fmtShort(last?.created_at) })),
    el('span', { class: 'row-top' },
      el('span', { class: `row-sub${typing ? ' typing-text' : ''}${mark ? ' with-mark' : ''}` }, mark, preview),
      unread ? X.rowBadge(conv) : null,
      unread ? el('span', { class: 'badge', text: unread > 99 ? '99+' : String(unread) }) : null))));
}

function renderHeader(conv) {
  $('conv-title').textContent = convName(conv);
  let sub;
  if (conv.type === 'group') {
    const names = membersInOrder(conv).map((m) => userName(m.user_id));
    sub = `${names.length} member${names.length === 1 ? '' : 's'}: ${names.join(', ')}`;
  } else {
    const u = S.users.get(otherId(conv));
    sub = !S.wsReady ? 'connecting…' : u?.status === 'online' ? 'online' : fmtLastSeen(u?.last_seen);
  }
  $('conv-sub').textContent = sub;
  $('conv-sub').classList.toggle('online', sub === 'online');
  // 1:1 calls only: the server rings one callee. Groups explain this in their details panel.
  $('call-buttons').hidden = conv.type !== 'one_to_one';
  $('info-btn').hidden = conv.type !== 'group';
  $('conv-title-btn').disabled = conv.type !== 'group';
  X.header(conv);
}

// ---- group details: members with their role, add (admins), remove (admins), leave

const isAdmin = (conv, uid = me()) => conv.members.get(uid)?.role === 'admin';

// Me first, then admins, then by name.
function membersInOrder(conv) {
  const rank = (m) => (m.user_id === me() ? 0 : m.role === 'admin' ? 1 : 2);
  return [...conv.members.values()].sort((a, b) => rank(a) - rank(b)
    || userName(a.user_id).localeCompare(userName(b.user_id)));
}

function renderDetails(conv) {
  const admin = isAdmin(conv);
  $('details-title').textContent = convName(conv);
  $('add-members').hidden = !admin;
  $('rename-form').hidden = !admin;
  if (document.activeElement !== $('rename-input')) $('rename-input').value = conv.name || '';
  const members = membersInOrder(conv);
  $('members-count').textContent = `${members.length} member${members.length === 1 ? '' : 's'}`;
  $('members-list').replaceChildren(...members.map((m) => memberRow(conv, m, admin)));
}

function memberRow(conv, m, admin) {
  const u = S.users.get(m.user_id) || {};
  const self = m.user_id === me();
  return el('li', { class: 'member', 'data-user-id': m.user_id },
    avatar(u.display_name || u.username, u.status),
    el('span', { class: 'row-main' },
      el('span', { class: 'row-top' },
        el('span', { class: 'row-name', text: self ? `${u.display_name || u.username || 'You'} (you)` : userName(m.user_id) }),
        m.role === 'admin' ? el('span', { class: 'role-badge', text: 'admin' }) : null),
      el('span', { class: 'row-sub', text: u.username ? `@${u.username}` : '' })),
    self ? null : el('button', { type: 'button', class: 'ghost small', title: 'Open your chat with them',
                                 onclick: () => startDirect(m.user_id) }, 'Message'),
    admin && !self ? el('button', { type: 'button', class: 'danger-outline small', title: 'Remove from the group',
                                    onclick: (e) => removeMember(conv, m.user_id, e.currentTarget) }, 'Remove') : null);
}

function openDetails() {
  const conv = S.convs.get(S.current);
  if (!conv || conv.type !== 'group') return;
  S.details = true;
  $('member-search').value = '';
  $('member-results').replaceChildren();
  $('leave-confirm').hidden = true;
  $('leave-btn').hidden = false;
  invalidate('details');
  refreshConversation(conv.id); // fresh roles and presence
}

function closeDetails() {
  S.details = false;
  invalidate('details');
}

async function addMember(conv, uid, button) {
  button.disabled = true;
  try {
    mergeConv(await api('POST', `/api/conversations/${conv.id}/members`, { member_ids: [uid] }));
    $('member-search').value = '';
    $('member-results').replaceChildren();
    invalidate('details', 'header');
  } catch (err) { button.disabled = false; report(err); }
}

async function removeMember(conv, uid, button) {
  button.disabled = true;
  try {
    await api('DELETE', `/api/conversations/${conv.id}/members/${encodeURIComponent(uid)}`);
    conv.members.delete(uid);
    invalidate('details', 'header');
  } catch (err) { button.disabled = false; report(err); }
}

// The server lets the last admin leave, and then nobody can add or remove members: say so.
function askLeave() {
  const conv = S.convs.get(S.current);
  if (!conv) return;
  const admins = [...conv.members.values()].filter((m) => m.role === 'admin');
  const lastAdmin = isAdmin(conv) && admins.length === 1 && conv.members.size > 1;
  $('leave-text').textContent = lastAdmin
    ? 'You are the only admin: after you leave, nobody can add or remove members. Leave anyway?'
    : 'Leave this group? You will stop getting its messages.';
  $('leave-btn').hidden = true;
  $('leave-confirm').hidden = false;
}

async function leaveGroup() {
  const conv = S.convs.get(S.current);
  if (!conv || conv.type !== 'group') return;
  $('leave-yes').disabled = true;
  try {
    await api('DELETE', `/api/conversations/${conv.id}/members/${encodeURIComponent(me())}`);
    S.details = false;
    forgetConversation(conv, `You left "${convName(conv)}"`);
  } catch (err) { report(err); } finally { $('leave-yes').disabled = false; }
}

// PATCH /api/conversations/{id} {name} (group admins, DESIGN §7); every member's devices
// then get conversation_updated (onConversationUpdated).
async function renameGroup(e) {
  e.preventDefault();
  const conv = S.convs.get(S.current);
  const name = $('rename-input').value.trim();
  if (!conv || conv.type !== 'group' || !name || name === conv.name) return;
  try {
    const r = await api('PATCH', `/api/conversations/${conv.id}`, { name });
    conv.name = r?.name ?? name;
    $('rename-input').blur();
    invalidate('sidebar', 'header', 'details');
  } catch (err) { report(err); }
}

const runMemberSearch = debounce(async () => {
  const conv = S.convs.get(S.current);
  const q = $('member-search').value.trim();
  const list = $('member-results');
  if (!q || !conv) { list.replaceChildren(); return; }
  try {
    const users = (await searchUsers(q)).filter((u) => !conv.members.has(u.id));
    if ($('member-search').value.trim() !== q) return;
    list.replaceChildren(...(users.length
      ? users.map((u) => userRow(u, (ev) => addMember(conv, u.id, ev.currentTarget), 'Add'))
      : [el('li', { class: 'muted', text: 'No one found (members are not listed)' })]));
  } catch (err) { report(err); }
}, 250);

const TICK_LABEL = { sent: 'Sent', delivered: 'Delivered', read: 'Read' };

function tick(conv, m) {
  if (m.failed) {
    return el('button', { type: 'button', class: 'tick failed', 'data-state': 'failed', title: `${m.failed}. Click to retry.`,
                          onclick: () => { transmit(m); invalidate('messages'); } },
    icon('alert'), 'Retry');
  }
  if (m.pending) return el('span', { class: 'tick pending', 'data-state': 'pending', title: 'Sending…' }, icon('clock', { title: 'Sending…' }));
  const st = statusOf(conv, m.seq);
  return el('span', { class: `tick ${st}`, 'data-state': st, title: TICK_LABEL[st] },
    icon(st === 'sent' ? 'check' : 'checks', { title: TICK_LABEL[st] }));
}

// The timeline: messages in seq order, this conversation's calls merged in by time (only
// those after the oldest loaded message while older history is still to load), then the
// messages still being sent.
function timeline(conv) {
  const msgs = [...conv.msgs.values()].sort((a, b) => a.seq - b.seq)
    .map((m) => ({ kind: 'msg', m, d: toDate(m.created_at) || new Date() }));
  const oldest = msgs.length ? msgs[0].d.getTime() : -Infinity;
  const calls = callsOf(conv).map((c) => ({ kind: 'call', c, d: toDate(c.started_at) || new Date() }))
    .filter((x) => !conv.hasMore || x.d.getTime() >= oldest)
    .sort((a, b) => a.d - b.d);
  const out = [];
  let j = 0;
  for (const x of msgs) {
    while (j < calls.length && calls[j].d < x.d) out.push(calls[j++]);
    out.push(x);
  }
  out.push(...calls.slice(j));
  for (const m of conv.pending.values()) out.push({ kind: 'msg', m, d: toDate(m.created_at) || new Date() });
  return out;
}

const DAY_FORMAT = { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric' };

function renderMessages() {
  const conv = S.convs.get(S.current);
  const box = $('messages');
  if (!conv) return;
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const items = timeline(conv);
  const nodes = [];
  if (conv.hasMore) nodes.push(el('button', { type: 'button', class: 'older', onclick: () => loadOlder(conv) }, 'Load older messages'));
  else if (conv.loaded && !items.length) nodes.push(el('div', { class: 'muted center', text: 'No messages yet. Say hi!' }));
  let prev = null;
  for (const it of items) {
    const { d } = it;
    if (!prev || !sameDay(prev.d, d)) nodes.push(el('div', { class: 'day', text: d.toLocaleDateString([], DAY_FORMAT) }));
    if (it.kind === 'call') {
      nodes.push(callEntry(it.c));
      prev = { m: null, d };
      continue;
    }
    const { m } = it;
    const mine = m.sender_id === me();
    const grouped = prev?.m && prev.m.sender_id === m.sender_id && sameDay(prev.d, d);
    const v = X.view(conv, m); // reply quote, mentions, attachments, reactions, menu (features.js)
    nodes.push(el('div', { class: `msg ${mine ? 'mine' : 'theirs'}${grouped ? ' grouped' : ''}${v.cls}`, title: d.toLocaleString(),
                           'data-id': m.id || null, 'data-seq': m.seq ?? null },
      conv.type === 'group' && !mine && !grouped ? el('div', { class: 'sender', text: userName(m.sender_id) }) : null,
      ...(v.replace ? [v.replace] : [...v.before, v.noBody ? null : v.body ?? el('div', { class: 'body', text: m.content }), ...v.after]),
      el('div', { class: 'meta' }, v.menu, ...v.meta, fmtTime(d), mine ? tick(conv, m) : null)));
    prev = { m, d };
  }
  box.replaceChildren(...nodes);
  if (S.scrollToBottom || nearBottom) box.scrollTop = box.scrollHeight;
  S.scrollToBottom = false;
  if (conv.type === 'group') for (const { m } of items) if (m && m.sender_id !== me()) ensureUser(m.sender_id);
}

function renderTyping(conv) {
  const names = typers(conv.id).map(userName);
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  $('typing').textContent = text;
}

function autosize() {
  const t = $('composer-input');
  t.style.height = '';
  if (!t.value || !t.scrollHeight) return; // empty or not laid out yet: natural height
  const border = t.offsetHeight - t.clientHeight;
  t.style.height = `${Math.min(t.scrollHeight + border, 140)}px`;
  t.style.overflowY = t.scrollHeight > 140 ? 'auto' : 'hidden';
}

// ------------------------------------------------------------------ calls (WebRTC)

const sdpOf = (x) => (typeof x === 'string' ? x : x?.sdp || '');

async function iceServers() {
  if (S.ice.servers && Date.now() < S.ice.expires) return S.ice.servers;
  try {
    const r = await api('GET', '/api/ice-servers');
    S.ice = { servers: r.ice_servers || [], expires: Date.now() + Math.max(60, (r.ttl || 3600) - 60) * 1000 };
  } catch {
    S.ice = { servers: [], expires: Date.now() + 60000 }; // older servers: host candidates only
  }
  return S.ice.servers;
}

async function getMedia(media) {
  if (!navigator.mediaDevices?.getUserMedia) {
    toast('Camera and microphone need a secure (https) page: joining without them');
    return new MediaStream();
  }
  for (const c of media === 'video' ? [{ audio: true, video: true }, { audio: true }] : [{ audio: true }]) {
    try { return await navigator.mediaDevices.getUserMedia(c); } catch { /* try the next */ }
  }
  toast('No camera or microphone available: joining without them');
  return new MediaStream();
}

function newPeer(call, servers) {
  const pc = new RTCPeerConnection({ iceServers: servers });
  pc.onicecandidate = (e) => {
    if (!e.candidate) return;
    const c = e.candidate.toJSON();
    if (call.id) send('ice_candidate', { call_id: call.id, candidate: c });
    else call.outbox.push(c); // call_id comes with call_ringing
  };
  pc.ontrack = (e) => {
    call.remote ||= new MediaStream();
    if (!call.remote.getTracks().includes(e.track)) call.remote.addTrack(e.track);
    $('remote-video').srcObject = call.remote;
  };
  pc.onconnectionstatechange = () => {
    if (S.call !== call) return;
    if (pc.connectionState === 'connected') callStatus(`In call with ${userName(call.peer)}`);
    if (pc.connectionState === 'failed') hangUp('Call failed: no network path');
  };
  for (const kind of call.media === 'video' ? ['audio', 'video'] : ['audio']) {
    const track = call.stream.getTracks().find((t) => t.kind === kind);
    if (track) pc.addTrack(track, call.stream);
    else if (call.role === 'caller') pc.addTransceiver(kind, { direction: 'recvonly' });
  }
  call.pc = pc;
  return pc;
}

function normCandidate(c) {
  if (!c) return null;
  if (typeof c === 'string') return { candidate: c, sdpMLineIndex: 0 };
  return c.candidate ? c : null;
}

function addCandidate(call, c) {
  call.pc.addIceCandidate(c).catch((err) => console.warn('ICE candidate rejected', err));
}

function applyRemote(call) {
  call.remoteSet = true;
  for (const c of call.inbox.splice(0)) addCandidate(call, c);
}

async function startCall(media) {
  const conv = S.convs.get(S.current);
  if (!conv || conv.type !== 'one_to_one') return;
  if (S.call) { toast('You are already in a call'); return; }
  if (!S.wsReady) { toast('Not connected: try again in a moment'); return; }
  const call = { role: 'caller', id: null, ref: uuid(), peer: otherId(conv), cid: conv.id, media,
                 inbox: [], outbox: [], remoteSet: false, state: 'calling' };
  S.call = call;
  showCall(`Calling ${userName(call.peer)}…`);
  try {
    const [stream, servers] = await Promise.all([getMedia(media), iceServers()]);
    call.stream = stream;
    if (S.call !== call) { releaseCall(call); return; }
    $('local-video').srcObject = stream;
    const pc = newPeer(call, servers);
    await pc.setLocalDescription(await pc.createOffer());
    if (S.call !== call) return;
    send('call_offer', { recipient_id: call.peer, conversation_id: call.cid, media, offer: pc.localDescription.sdp }, call.ref);
  } catch (err) {
    if (S.call === call) endCall(`Call failed: ${err.message}`);
  }
}

async function acceptCall() {
  const call = S.call;
  if (!call || call.state !== 'incoming') return;
  call.state = 'connecting';
  showCall('Connecting…');
  try {
    const [stream, servers] = await Promise.all([getMedia(call.media), iceServers()]);
    call.stream = stream;
    if (S.call !== call) { releaseCall(call); return; }
    $('local-video').srcObject = stream;
    const pc = newPeer(call, servers);
    await pc.setRemoteDescription({ type: 'offer', sdp: call.offer });
    applyRemote(call);
    await pc.setLocalDescription(await pc.createAnswer());
    if (S.call !== call) return;
    send('call_answer', { call_id: call.id, answer: pc.localDescription.sdp });
    call.state = 'active';
  } catch (err) {
    if (S.call === call) hangUp(`Call failed: ${err.message}`);
  }
}

function rejectCall() {
  if (S.call?.state !== 'incoming') return;
  send('call_reject', { call_id: S.call.id, reason: 'declined' });
  endCall(null);
}

function hangUp(message = null) {
  const call = S.call;
  if (!call) return;
  if (call.id) send('call_end', { call_id: call.id });
  else if (call.role === 'caller') S.cancelledOffer = Date.now(); // end it once we learn its id
  endCall(message);
}

function releaseCall(call) {
  call.pc?.close();
  call.stream?.getTracks().forEach((t) => t.stop());
}

function endCall(message) {
  const call = S.call;
  S.call = null;
  if (call) releaseCall(call);
  $('local-video').srcObject = null;
  $('remote-video').srcObject = null;
  $('call-panel').hidden = true;
  $('call-panel').className = 'call-panel';
  if (message) toast(message, 'info');
  if (call) refreshCalls(call.id); // the call's entry in the chat and in the history
}

const END_REASONS = { disconnected: 'connection lost', caller_disconnected: 'connection lost',
                      timeout: 'no answer', offline: 'they are offline' };
function endText(reason) {
  const why = reason && reason !== 'hangup' ? END_REASONS[reason] || reason : '';
  return why ? `Call ended (${why})` : 'Call ended';
}

function callStatus(text) { $('call-status').textContent = text; }

function showCall(text) {
  const call = S.call;
  const incoming = call.state === 'incoming';
  callStatus(text);
  const panel = $('call-panel');
  panel.hidden = false;
  panel.classList.toggle('video', call.media === 'video' && !incoming);
  panel.classList.toggle('incoming', incoming);
  panel.dataset.state = call.state;
  $('call-icon').replaceChildren(icon(call.media === 'video' ? 'video' : 'phone'));
  $('call-accept').hidden = !incoming;
  $('call-reject').hidden = !incoming;
  $('call-hangup').hidden = incoming;
}

// ---- call history: /api/calls, shown in the Calls tab and as entries in each chat

const TERMINAL_CALL = new Set(['ended', 'missed', 'rejected', 'busy', 'failed', 'cancelled']);

async function loadCalls() {
  if (!S.auth) return false;
  try {
    const r = await api('GET', '/api/calls?limit=100');
    S.calls = new Map((r.calls || []).map((c) => [c.id, c]));
    for (const c of S.calls.values()) ensureUser(callPeer(c));
  } catch (err) {
    console.warn('call history unavailable', err);
    return false;
  }
  invalidate('sidebar', 'messages');
  return true;
}

// After a call: the server records the end before telling the other side, but the side that
// hung up may ask first; poll briefly until the record is final.
function refreshCalls(callId, tries = 8) {
  clearTimeout(S.callsTimer);
  S.callsTimer = setTimeout(async () => {
    await loadCalls();
    const c = callId && S.calls.get(callId);
    if (callId && (!c || !TERMINAL_CALL.has(c.status)) && tries > 1) refreshCalls(callId, tries - 1);
  }, tries === 8 ? 0 : 400);
}

const callPeer = (c) => (c.caller_id === me() ? c.callee_id : c.caller_id);

function fmtDuration(seconds) {
  const t = Math.max(0, Math.round(seconds || 0));
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const ss = String(t % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

// {kind, icon, text} of a call record from my side. kind: answered | missed | declined | other.
function describeCall(c) {
  const out = c.caller_id === me();
  const what = c.media === 'video' ? 'video call' : 'audio call';
  const What = what[0].toUpperCase() + what.slice(1);
  switch (c.status) {
    case 'ended':
      if (c.answered_at) {
        return { kind: 'answered', icon: out ? 'phone-out' : 'phone-in',
                 text: `${out ? 'Outgoing' : 'Incoming'} ${what}, ${fmtDuration(c.duration_seconds)}` };
      }
      return { kind: 'other', icon: 'phone-off', text: `${What} ended` };
    case 'missed':
      return out ? { kind: 'missed', icon: 'phone-out', text: `${What}, no answer` }
        : { kind: 'missed', icon: 'phone-missed', text: `Missed ${what}` };
    case 'cancelled':
      return out ? { kind: 'other', icon: 'phone-out', text: `Cancelled ${what}` }
        : { kind: 'missed', icon: 'phone-missed', text: `Missed ${what}` };
    case 'rejected':
      return { kind: 'declined', icon: 'phone-off', text: out ? `${What} declined` : `Declined ${what}` };
    case 'busy':
      return out ? { kind: 'declined', icon: 'phone-off', text: `${What}: busy` }
        : { kind: 'missed', icon: 'phone-missed', text: `Missed ${what} (busy)` };
    case 'failed':
      return { kind: 'declined', icon: 'phone-off', text: `${What} failed` };
    default:
      return { kind: 'other', icon: out ? 'phone-out' : 'phone-in',
               text: S.call?.id === c.id ? `${What} in progress` : What };
  }
}

// The calls that belong in a conversation's timeline (records made without a
// conversation_id are matched to the 1:1 with the other person).
function callsOf(conv) {
  const peer = conv.type === 'one_to_one' ? otherId(conv) : null;
  return [...S.calls.values()].filter((c) => c.conversation_id === conv.id
    || (!c.conversation_id && peer && callPeer(c) === peer));
}

function callEntry(c) {
  const d = describeCall(c);
  const at = toDate(c.started_at);
  return el('div', { class: `call-entry ${d.kind}`, 'data-call-id': c.id, 'data-status': c.status,
                     title: at ? at.toLocaleString() : null },
    icon(d.icon), el('span', { class: 'call-text', text: d.text }),
    el('span', { class: 'call-time', text: at ? fmtTime(at) : '' }));
}

async function onCallFrame(type, p) {
  const call = S.call;
  if (type === 'call_offer') {
    if (call?.id === p.call_id) return;
    if (call) { send('call_reject', { call_id: p.call_id, reason: 'busy' }); return; }
    S.call = { role: 'callee', id: p.call_id, peer: p.caller_id, cid: p.conversation_id, media: p.media || 'audio',
               offer: sdpOf(p.offer), inbox: [], outbox: [], remoteSet: false, state: 'incoming' };
    await ensureUser(p.caller_id);
    if (S.call?.id === p.call_id && S.call.state === 'incoming') {
      showCall(`${userName(p.caller_id)} is calling you (${S.call.media})…`);
    }
    return;
  }
  // The caller learns its call id from call_ringing (or, at the latest, call_answer).
  if (call?.role === 'caller' && !call.id && p.call_id && (type === 'call_ringing' || type === 'call_answer')) {
    call.id = p.call_id;
    for (const c of call.outbox.splice(0)) send('ice_candidate', { call_id: call.id, candidate: c });
  }
  if (!call || p.call_id !== call.id) {
    if (type === 'call_ringing' && Date.now() - S.cancelledOffer < 30000) {
      send('call_end', { call_id: p.call_id }); // we hung up before it started ringing
      S.cancelledOffer = 0;
    }
    return;
  }
  switch (type) {
    case 'call_ringing': callStatus(`Ringing ${userName(call.peer)}…`); break;
    case 'call_answer':
      try {
        callStatus('Connecting…');
        await call.pc.setRemoteDescription({ type: 'answer', sdp: sdpOf(p.answer) });
        call.state = 'active';
        $('call-panel').classList.toggle('video', call.media === 'video');
        applyRemote(call);
      } catch (err) { hangUp(`Call failed: ${err.message}`); }
      break;
    case 'ice_candidate': {
      const c = normCandidate(p.candidate);
      if (!c) break;
      if (call.remoteSet && call.pc) addCandidate(call, c);
      else call.inbox.push(c);
      break;
    }
    case 'call_reject':
      endCall(p.reason === 'busy' ? `${userName(call.peer)} is busy`
        : p.reason === 'blocked' ? 'You cannot call this person' : 'Call declined');
      break;
    case 'call_end':
      endCall(call.state === 'incoming' ? `Missed call from ${userName(call.peer)}` : endText(p.reason));
      break;
    case 'call_answered_elsewhere': endCall('Call answered on another device'); break;
    default: break;
  }
}

// ------------------------------------------------------------------ views + wiring

let authMode = 'login';
function setAuthMode(mode) {
  authMode = mode;
  for (const b of document.querySelectorAll('[data-tab]')) b.classList.toggle('active', b.dataset.tab === mode);
  for (const box of document.querySelectorAll('[data-mode]')) {
    box.hidden = box.dataset.mode !== mode;
    for (const input of box.querySelectorAll('input')) input.disabled = box.hidden;
  }
  $('auth-form').password.autocomplete = mode === 'login' ? 'current-password' : 'new-password';
  $('auth-submit').textContent = mode === 'login' ? 'Sign in' : 'Create account';
  $('auth-error').textContent = '';
}

async function onAuthSubmit(e) {
  e.preventDefault();
  const f = Object.fromEntries(new FormData($('auth-form')));
  const err = $('auth-error');
  err.textContent = '';
  try {
    let data;
    if (authMode === 'register') {
      const body = { username: (f.username || '').trim(), email: (f.email || '').trim(), password: f.password || '',
                     display_name: (f.display_name || '').trim() || (f.username || '').trim() };
      const broken = checkRegistration(body); // the server's rules, checked before asking it
      if (broken) {
        $('auth-form')[broken.field]?.focus();
        throw new Error(broken.message);
      }
      data = await api('POST', '/api/auth/register', body);
    } else {
      const login = (f.login || '').trim();
      if (!login || !f.password) throw new Error('Enter your email (or username) and password.');
      data = await api('POST', '/api/auth/login', login.includes('@')
        ? { email: login, password: f.password } : { username: login, password: f.password });
    }
    saveAuth(data);
    $('auth-form').reset();
    start();
  } catch (ex) {
    err.textContent = ex.message;
  }
}

function start() {
  $('auth-view').hidden = true;
  $('app-view').hidden = false;
  $('me-name').textContent = S.auth.user?.display_name || S.auth.user?.username || '';
  rememberUser(S.auth.user);
  connect();
  loadConversations().catch(report);
  api('GET', '/api/users/me').then((u) => {
    if (!S.auth) return;
    saveAuth({ ...S.auth, user: { ...S.auth.user, ...u } });
    $('me-name').textContent = u.display_name || u.username;
  }).catch(() => {});
  loadCalls();
  X.start();
  invalidate('sidebar');
}

// Settings hook: changing the display name needs PATCH /api/users/me {display_name}
// (DESIGN §7), not on the server yet. When it is: a "Profile" button in the me-bar opens a
// small form calling it, then saveAuth() with the returned user and re-render.
// Admin hook: once GET /api/admin/users and /deactivate, /reactivate exist, show an "Admin"
// tab in the sidebar when S.auth.user.is_admin.

function signOut(message) {
  X.signOut();
  if (S.call) hangUp();
  disconnect();
  stopTyping();
  S.auth = null;
  localStorage.removeItem(AUTH_KEY);
  S.convs.clear();
  S.users.clear();
  S.calls.clear();
  S.current = null;
  S.details = false;
  S.side = 'chats';
  document.body.classList.remove('show-pane');
  $('app-view').hidden = true;
  $('auth-view').hidden = false;
  setAuthMode('login');
  $('auth-error').textContent = message || '';
}

async function logout() {
  // this browser stops getting the account's pushes, while the token still works (bounded)
  await Promise.race([X.beforeLogout().catch(() => {}), new Promise((r) => { setTimeout(r, 2000); })]);
  const rt = S.auth?.refresh_token;
  if (rt) {
    fetch('/api/auth/logout', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                body: JSON.stringify({ refresh_token: rt }) }).catch(() => {});
  }
  signOut();
}

function wire() {
  for (const b of document.querySelectorAll('[data-tab]')) b.addEventListener('click', () => setAuthMode(b.dataset.tab));
  $('auth-form').addEventListener('submit', onAuthSubmit);
  $('logout-btn').addEventListener('click', logout);
  $('search-input').addEventListener('input', runSearch);
  $('search-input').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.target.value = ''; $('search-results').hidden = true; }
  });
  $('new-group-btn').addEventListener('click', openGroupDialog);
  $('group-search').addEventListener('input', runGroupSearch);
  $('group-form').addEventListener('submit', createGroup);
  $('group-cancel').addEventListener('click', () => $('group-dialog').close());
  $('back-btn').addEventListener('click', closeConversation);
  for (const b of document.querySelectorAll('[data-side]')) {
    b.addEventListener('click', () => { S.side = b.dataset.side; if (S.side === 'calls') loadCalls(); invalidate('sidebar'); });
  }
  $('info-btn').addEventListener('click', openDetails);
  $('conv-title-btn').addEventListener('click', openDetails);
  $('details-close').addEventListener('click', closeDetails);
  $('member-search').addEventListener('input', runMemberSearch);
  $('rename-form').addEventListener('submit', renameGroup);
  $('leave-btn').addEventListener('click', askLeave);
  $('leave-cancel').addEventListener('click', () => { $('leave-btn').hidden = false; $('leave-confirm').hidden = true; });
  $('leave-yes').addEventListener('click', leaveGroup);
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); sendMessage(); });
  const input = $('composer-input');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendMessage(); }
  });
  input.addEventListener('input', () => { autosize(); onComposerInput(); });
  input.addEventListener('blur', stopTyping);
  $('audio-call-btn').addEventListener('click', () => startCall('audio'));
  $('video-call-btn').addEventListener('click', () => startCall('video'));
  $('call-accept').addEventListener('click', acceptCall);
  $('call-reject').addEventListener('click', rejectCall);
  $('call-hangup').addEventListener('click', () => hangUp());
  document.addEventListener('visibilitychange', () => { if (S.current) queueReceipt(S.current); });
  window.addEventListener('focus', () => { if (S.current) queueReceipt(S.current); });
  window.addEventListener('online', () => { if (S.auth && !S.ws) { S.attempt = 0; connect(); } });
  window.addEventListener('storage', (e) => { if (e.key === AUTH_KEY && !e.newValue && S.auth) signOut(); });
  setInterval(() => invalidate('header'), 30000); // keep "last seen … ago" fresh
}

const X = installFeatures({
  S, $, el, icon, api, send, invalidate, toast, report, me, uuid, userName, convName, otherId, isAdmin,
  avatar, fmtShort, ensureUser, rememberUser, saveAuth, refreshAuth, loadConversations, loadHistory,
  openConversation, autosize, renderNow: flushRender,
});

hydrateIcons();
wire();
setAuthMode('login');
if (S.auth?.token) start();
else $('auth-view').hidden = false;
