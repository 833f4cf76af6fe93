// Message search (DESIGN §7 "Search": GET /api/search) and jumping to a message in its
// conversation with history loaded around it (also used by reply quotes).
//
// `snippet` comes HTML-escaped from the server with only <mark>…</mark> added. It is still
// never parsed as HTML here: it is split on the two tags, each piece unescaped and put in a
// text node, the marked pieces in <mark> elements.

let C = null;
let flash = null;            // {id, until}: the message just jumped to, highlighted a moment
let lastQuery = null;        // {q, cid} of the results on screen
let searchSeq = 0;           // answers to older queries are dropped

const LIMIT = 20;
const MAX_PAGES_BACK = 40;   // older pages loaded to reach a message (50 each: 2,000 messages)

export function install(ctx) {
  C = ctx;
  const box = C.$('msg-search-input');
  box.addEventListener('input', () => { scope(); run(); });
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { box.value = ''; hide(); }
    if (e.key === 'Enter') { e.preventDefault(); run.now(); }
  });
  C.$('msg-search-here').addEventListener('change', () => run.now());
}

// "only in <this chat>", offered while a conversation is open and something is typed
function scope() {
  const conv = C.S.convs.get(C.S.current);
  C.$('msg-search-scope').hidden = !conv?.type || !C.$('msg-search-input').value.trim();
  C.$('msg-search-scope-name').textContent = conv?.type ? C.convName(conv) : '';
}

export const header = scope;

export function signOut() {
  lastQuery = null;
  flash = null;
  C.$('msg-search-input').value = '';
  hide();
}

function hide() {
  C.$('msg-search-results').hidden = true;
  C.$('msg-search-results').replaceChildren();
  lastQuery = null;
}

const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
function unescapeHtml(s) {
  return s.replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (all, name) => {
    if (name[0] === '#') {
      const n = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      return Number.isFinite(n) && n > 0 && n <= 0x10ffff ? String.fromCodePoint(n) : all;
    }
    return ENTITIES[name.toLowerCase()] ?? all;
  });
}

// The snippet as DOM nodes: text nodes, and <mark> elements holding text nodes.
export function snippetNodes(snippet) {
  const out = [];
  let marked = false;
  for (const part of String(snippet || '').split(/(<mark>|<\/mark>)/)) {
    if (part === '<mark>') { marked = true; continue; }
    if (part === '</mark>') { marked = false; continue; }
    if (!part) continue;
    const text = document.createTextNode(unescapeHtml(part));
    if (marked) {
      const m = document.createElement('mark');
      m.append(text);
      out.push(m);
    } else {
      out.push(text);
    }
  }
  return out;
}

function debounced(fn, ms) {
  let t = 0;
  const wrapped = () => { clearTimeout(t); t = setTimeout(fn, ms); };
  wrapped.now = () => { clearTimeout(t); fn(); };
  return wrapped;
}

const run = debounced(() => search(false), 300);

// The `before` cursor for the next page: what the server hands out, else the last hit's id.
function nextBefore(r, results) {
  return r.next_before ?? r.before ?? r.cursor ?? results.at(-1)?.message?.id ?? null;
}

async function search(more) {
  const q = C.$('msg-search-input').value.trim();
  const list = C.$('msg-search-results');
  if (!q) { hide(); return; }
  const cid = C.$('msg-search-here').checked && C.S.current ? C.S.current : null;
  if (more && (!lastQuery || lastQuery.q !== q || lastQuery.cid !== cid)) more = false;
  const params = new URLSearchParams({ q, limit: String(LIMIT) });
  if (cid) params.set('conversation_id', cid);
  if (more && lastQuery.before) params.set('before', lastQuery.before);
  const mine = ++searchSeq;
  let r;
  try {
    r = await C.api('GET', `/api/search?${params}`);
  } catch (err) {
    if (mine === searchSeq) {
      list.replaceChildren(C.el('li', { class: 'muted', text: `Search failed: ${err.message}` }));
      list.hidden = false;
    }
    return;
  }
  if (mine !== searchSeq) return;
  const results = (r.results || []).filter((x) => x?.message?.id);
  for (const x of results) C.ensureUser(x.message.sender_id);
  lastQuery = { q, cid, before: nextBefore(r, results) };
  const rows = results.map(resultRow);
  if (!more) list.replaceChildren();
  list.querySelector('.search-more')?.remove();
  if (!more && !rows.length) rows.push(C.el('li', { class: 'muted', text: 'No messages found' }));
  list.append(...rows);
  if (r.has_more && lastQuery.before) {
    list.append(C.el('li', { class: 'search-more' }, C.el('button', {
      type: 'button', class: 'ghost small', onclick: () => search(true) }, 'More results')));
  }
  list.hidden = false;
}

function resultRow({ message: m, snippet }) {
  const conv = C.S.convs.get(m.conversation_id);
  const where = conv?.type ? C.convName(conv) : 'Conversation';
  const who = m.sender_id === C.me() ? 'You' : C.userName(m.sender_id);
  return C.el('li', {}, C.el('button', {
    type: 'button', class: 'row search-hit', 'data-message-id': m.id,
    'data-conversation-id': m.conversation_id,
    onclick: () => jumpTo(m.conversation_id, m.id, m.seq),
  }, C.el('span', { class: 'row-main' },
    C.el('span', { class: 'row-top' },
      C.el('span', { class: 'row-name', text: where }),
      C.el('span', { class: 'row-time', text: C.fmtShort(m.created_at) })),
    C.el('span', { class: 'row-sub snippet' },
      C.el('span', { class: 'snippet-who', text: `${who}: ` }),
      ...(snippet ? snippetNodes(snippet) : [document.createTextNode(m.content || '')])))));
}

export const msgClass = (m) => (flash && flash.id === m.id && Date.now() < flash.until ? ' flash' : '');

// Opens conversation `cid` with message `id` (of `seq`, when known) loaded, scrolled to the
// middle of the view and highlighted. Older history is loaded page by page up to it, so the
// timeline stays contiguous (the messages around it are there too).
export async function jumpTo(cid, id, seq) {
  const { S } = C;
  if (!S.convs.get(cid)?.type) {
    try { await C.loadConversations(); } catch (err) { C.report(err); return; }
  }
  const conv = S.convs.get(cid);
  if (!conv?.type) { C.toast('That conversation is not available any more', 'info'); return; }
  if (S.current !== cid) await C.openConversation(cid);
  else if (!conv.loaded) await C.loadHistory(conv);
  const far = () => !conv.msgs.has(id) || (seq && conv.hasMore && seq - 3 < Math.min(...[...conv.msgs.values()].map((m) => m.seq)));
  try {
    for (let i = 0; i < MAX_PAGES_BACK && conv.hasMore && far(); i++) await C.loadHistory(conv, true);
  } catch (err) { C.report(err); }
  if (S.current !== cid) return; // the user went elsewhere meanwhile
  if (!conv.msgs.has(id)) { C.toast('That message is not available any more', 'info'); return; }
  flash = { id, until: Date.now() + 2500 };
  S.scrollToBottom = false;
  C.invalidate('messages');
  C.renderNow();
  const node = document.querySelector(`#messages .msg[data-id="${CSS.escape(id)}"]`);
  node?.scrollIntoView({ block: 'center' });
  setTimeout(() => C.invalidate('messages'), 2600); // the highlight goes
}
