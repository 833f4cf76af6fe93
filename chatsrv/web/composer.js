// The composer's modes beyond plain sending: editing a message (↑ in an empty composer, or
// "Edit" in a message's menu), replying with a quoted preview, and `@` mention autocomplete
// from the conversation's members.

import { editMessage, excerpt, lastEditable, onMessageGone } from './changes.js';
import { closePopover, popoverOpen, showPopover } from './menu.js';

let C = null;
let editing = null;   // {cid, m} while the composer edits a message
let replying = null;  // {cid, m} while the next message is a reply
let mention = null;   // {start, options, index} while the mention list is open

const input = () => C.$('composer-input');

export function install(ctx) {
  C = ctx;
  const form = C.$('composer');
  // capture: runs before the textarea's own Enter handler in app.js
  form.addEventListener('keydown', onKeyDown, true);
  input().addEventListener('input', updateMention);
  input().addEventListener('click', updateMention);
  C.$('composer-bar-cancel').addEventListener('click', cancelModes);
  C.$('composer-bar-text').addEventListener('click', () => {
    const target = editing || replying;
    if (target) C.jumpTo(target.cid, target.m.id, target.m.seq);
  });
  onMessageGone((id) => {
    if (editing?.m.id === id || replying?.m.id === id) cancelModes();
  });
}

// ---- edit and reply

export function startEdit(conv, m) {
  replying = null;
  editing = { cid: conv.id, m };
  const box = input();
  box.value = m.content || '';
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
  C.autosize();
  renderBar();
}

export function startReply(conv, m) {
  if (editing) { editing = null; input().value = ''; }
  replying = { cid: conv.id, m };
  renderBar();
  input().focus();
}

export function cancelModes() {
  const wasEditing = Boolean(editing);
  editing = null;
  replying = null;
  if (wasEditing) { input().value = ''; C.autosize(); }
  renderBar();
}

function renderBar() {
  const target = editing || replying;
  const bar = C.$('composer-bar');
  bar.hidden = !target;
  C.$('composer').classList.toggle('editing', Boolean(editing));
  if (!target) return;
  bar.dataset.mode = editing ? 'edit' : 'reply';
  C.$('composer-bar-icon').replaceChildren(C.icon(editing ? 'edit' : 'reply'));
  C.$('composer-bar-title').textContent = editing ? 'Edit message'
    : `Reply to ${C.userName(target.m.sender_id)}`;
  C.$('composer-bar-excerpt').textContent = excerpt(target.m);
}

// Leaving a conversation leaves its edit/reply behind.
export function header(conv) {
  const target = editing || replying;
  if (target && target.cid !== conv.id) cancelModes();
}

// sendMessage asks first: an edit is sent here (and swallows the send).
export function beforeSend(conv, content) {
  if (!editing) return false;
  const { m } = editing;
  if (editing.cid !== conv.id) { cancelModes(); return false; }
  if (!content) { C.toast('A message cannot be empty: delete it instead', 'info'); return true; }
  if (content !== m.content && !editMessage(m, content)) return true; // not connected: keep it
  cancelModes();
  return true;
}

// What a new message carries from the composer: reply_to.
export function compose(conv) {
  if (!replying || replying.cid !== conv.id) return {};
  return { extra: { reply_to: replying.m.id }, shown: { reply_to: replying.m.id } };
}

export function afterSend() {
  if (replying) { replying = null; renderBar(); }
}

// ---- keys: mentions list first, then ↑ to edit, Escape to cancel

function onKeyDown(e) {
  if (e.target !== input() || e.isComposing) return;
  if (mention && popoverOpen()) {
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      const n = mention.options.length;
      mention.index = (mention.index + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
      highlightOption();
      stop(e);
      return;
    }
    // Enter on a name typed in full sends (nothing to complete); Tab always completes
    const typed = input().value.slice(mention.start + 1, input().selectionStart).toLowerCase();
    const chosen = mention.options[mention.index];
    if (e.key === 'Enter' && chosen.username.toLowerCase() === typed) closeMention();
    else if (e.key === 'Enter' || e.key === 'Tab') { pick(chosen); stop(e); return; }
    if (e.key === 'Escape') { closeMention(); stop(e); return; }
  }
  const conv = C.S.convs.get(C.S.current);
  if (e.key === 'ArrowUp' && !e.shiftKey && !input().value && conv && !editing) {
    const m = lastEditable(conv);
    if (m) { startEdit(conv, m); stop(e); }
    return;
  }
  if (e.key === 'Escape' && (editing || replying)) { cancelModes(); stop(e); }
}

function stop(e) {
  e.preventDefault();
  e.stopImmediatePropagation();
}

// ---- @mentions

// Members other than me with a known username, for the current conversation.
function candidates(conv) {
  const out = [];
  for (const uid of conv.members.keys()) {
    if (uid === C.me()) continue;
    const u = C.S.users.get(uid);
    if (u?.username) out.push(u);
    else C.ensureUser(uid);
  }
  return out;
}

const MENTION_BEFORE_CARET = /(^|[\s(])@([A-Za-z0-9_.-]{0,32})$/;

function updateMention() {
  const box = input();
  const conv = C.S.convs.get(C.S.current);
  const caret = box.selectionStart;
  const found = conv && caret === box.selectionEnd ? MENTION_BEFORE_CARET.exec(box.value.slice(0, caret)) : null;
  if (!found) { closeMention(); return; }
  const q = found[2].toLowerCase();
  const options = candidates(conv).filter((u) => u.username.toLowerCase().startsWith(q)
    || (u.display_name || '').toLowerCase().split(/\s+/).some((w) => w.startsWith(q)))
    .sort((a, b) => a.username.localeCompare(b.username)).slice(0, 6);
  if (!options.length) { closeMention(); return; }
  const start = caret - found[2].length - 1; // the '@'
  const same = mention && mention.start === start && popoverOpen();
  const now = { start, options, index: same ? Math.min(mention.index, options.length - 1) : 0 };
  const list = C.el('div', { class: 'mention-list', id: 'mention-list', role: 'listbox' },
    ...options.map((u, i) => C.el('button', {
      type: 'button', role: 'option', class: 'mention-option', 'data-username': u.username,
      'aria-selected': String(i === now.index),
      onmousedown: (ev) => ev.preventDefault(), // keep the caret in the textarea
      onclick: () => pick(u),
    }, C.el('span', { class: 'mention-name', text: u.display_name || u.username }),
    C.el('span', { class: 'mention-user', text: `@${u.username}` }))));
  // the list replaces the one before (whose onClose runs first), then this one is current
  showPopover(box, list, { place: 'above', align: 'start', onClose: () => { if (mention === now) mention = null; } });
  mention = now;
}

function highlightOption() {
  const nodes = document.querySelectorAll('#mention-list .mention-option');
  nodes.forEach((n, i) => n.setAttribute('aria-selected', String(i === mention.index)));
}

function closeMention() {
  if (mention) { mention = null; closePopover(); }
}

function pick(u) {
  const box = input();
  const { start } = mention;
  const caret = box.selectionStart;
  const insert = `@${u.username} `;
  box.value = box.value.slice(0, start) + insert + box.value.slice(caret);
  const at = start + insert.length;
  box.setSelectionRange(at, at);
  closeMention();
  box.focus();
  box.dispatchEvent(new Event('input'));
}
