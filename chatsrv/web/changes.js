// Message changes (DESIGN §7 "Message changes", "Changes while offline"): edit, delete and
// reactions, applied live from message_edited / message_deleted / reaction_update and, after
// a reconnect, from sync_result.changes (the cursor comes from ready.changes_cursor and each
// sync_result.changes_cursor). Applying a change twice gives the same state, so a change
// seen live and again in a later catch-up does no harm.

let C = null;                 // the app's context (features.js)
let cursor = null;            // the latest changes cursor we hold
let readyCursor = null;       // this connection's ready.changes_cursor
const acting = new Map();     // ref -> what we asked ('edit' | 'delete' | 'react'), for errors
const goneListeners = new Set();

// A handful of common reactions for the picker (any single emoji is accepted by the server).
export const QUICK_REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🙏'];

export function install(ctx) { C = ctx; }

// Called with a message id when a message is deleted (the composer drops a reply/edit of it).
export const onMessageGone = (fn) => goneListeners.add(fn);

// Every copy of message `id` in a conversation: the timeline's, and the conversation list's
// last_message when that came from another response.
function touch(p, fn) {
  const conv = C.S.convs.get(p.conversation_id);
  if (!conv) return null;
  const m = conv.msgs.get(p.message_id);
  if (m) fn(m);
  const last = conv.last_message;
  if (last && last.id === p.message_id && last !== m) fn(last);
  C.invalidate('sidebar', conv.id === C.S.current && 'messages');
  return conv;
}

function onEdited(p) {
  touch(p, (m) => {
    if (m.deleted) return;
    m.content = p.content ?? m.content;
    m.edited_at = p.edited_at || m.edited_at || new Date().toISOString();
    if (Array.isArray(p.mentions)) m.mentions = p.mentions;
  });
}

function onDeleted(p) {
  touch(p, (m) => {
    m.deleted = true;
    m.deleted_at = p.deleted_at || null;
    m.content = '';
    m.attachments = [];
    m.reactions = {};
  });
  for (const fn of goneListeners) fn(p.message_id);
}

// counts is {emoji: n} for the whole message; `me` is only known for my own emoji, so it is
// carried over from what we had, except for the emoji I (on any device) just changed.
export function applyCounts(old, p, myId) {
  const next = {};
  for (const [emoji, n] of Object.entries(p.counts || {})) {
    if (!(n > 0)) continue;
    const mine = p.user_id === myId && emoji === p.emoji ? Boolean(p.add) : Boolean(old?.[emoji]?.me);
    next[emoji] = { count: n, me: mine };
  }
  return next;
}

function onReaction(p) {
  touch(p, (m) => { if (!m.deleted) m.reactions = applyCounts(m.reactions, p, C.me()); });
}

const handlers = { message_edited: onEdited, message_deleted: onDeleted, reaction_update: onReaction };

function echo(handler) {
  return (p, ref) => {
    if (ref) acting.delete(ref);
    handler(p);
  };
}

export const frames = Object.fromEntries(Object.entries(handlers).map(([k, h]) => [k, echo(h)]));

function act(kind, type, payload) {
  const ref = C.uuid();
  if (!C.send(type, payload, ref)) {
    C.toast('Not connected: try again in a moment');
    return false;
  }
  acting.set(ref, kind);
  return true;
}

export const editMessage = (m, content) => act('edit', 'edit_message', { message_id: m.id, content });
export const deleteMessage = (m) => act('delete', 'delete_message', { message_id: m.id });
export const react = (m, emoji, add) => act('react', 'reaction', { message_id: m.id, emoji, add });

const FAILED = { edit: 'Could not edit the message', delete: 'Could not delete the message',
                 react: 'Could not react' };

export function onError(p, ref) {
  const sync = C.S.sync;
  if (ref && sync?.ref === ref && (p.field === 'changes_since' || /changes_since/.test(p.message || ''))) {
    // a cursor this server did not hand out (a restored database): sync the messages
    // without it, and go on from this connection's `ready` cursor
    cursor = readyCursor;
    C.send('sync', { conversations: sync.since }, ref);
    return true;
  }
  const kind = ref && acting.get(ref);
  if (!kind) return false;
  acting.delete(ref);
  C.toast(`${FAILED[kind]}: ${p.message || p.code}`);
  return true;
}

// Sent with the first sync after a reconnect; on the first connection there is nothing to
// catch up on (history comes from REST in its current state), so only remember the cursor.
export const syncExtra = () => (cursor ? { changes_since: cursor } : {});

export function onReady(p) {
  readyCursor = p.changes_cursor || null;
  if (cursor == null) cursor = readyCursor;
}

export function onSyncResult(p) {
  for (const change of p.changes || []) handlers[change?.type]?.(change.payload || {});
  if (p.changes_cursor) cursor = p.changes_cursor;
}

// The next page of changes, asked with the next sync while `changes_has_more`.
export const syncMore = (p) => (p.changes_has_more && p.changes_cursor ? { changes_since: p.changes_cursor } : null);

export function signOut() {
  cursor = null;
  readyCursor = null;
  acting.clear();
}

// My last message in the conversation that can still be edited (for ↑ in an empty composer).
export function lastEditable(conv) {
  let best = null;
  for (const m of conv.msgs.values()) {
    if (m.sender_id === C.me() && !m.deleted && (m.message_type || 'text') === 'text'
        && (!best || m.seq > best.seq)) best = m;
  }
  return best;
}

// The one-line text of a message for previews and quotes.
export function excerpt(m, max = 120) {
  if (!m) return 'Original message';
  if (m.deleted) return 'Message deleted';
  const text = (m.content || '').replace(/\s+/g, ' ').trim();
  if (!text && m.attachments?.length) {
    const a = m.attachments[0];
    return (a?.content_type || '').startsWith('image/') ? 'Photo' : a?.name || 'Attachment';
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
