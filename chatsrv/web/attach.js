// Attachments (DESIGN §7 "Uploads"): the attach button, drag-and-drop onto the conversation
// and pasted files upload with progress (XMLHttpRequest: fetch has no upload progress) to
// POST /api/uploads; the next message carries `attachments: [upload_id]`. In the timeline,
// images show their thumbnail (a lightbox on click) and other files a chip with name and size.
//
// Message payloads carry signed download URLs (`?sig=`), used as they are in <img src> and
// download links. A URL without a signature needs the bearer token, which <img src> cannot
// send: those bytes are fetched with it and shown through blob: URLs (the page CSP allows
// img-src blob:), each fetched once per page and kept (at most CACHE_MAX, oldest revoked).

let C = null;
const tray = [];               // {key, cid, file, name, size, progress, upload, error, xhr, preview}
const blobs = new Map();       // url -> {promise, url (once resolved)}
const CACHE_MAX = 200;
const THUMB_BOX = 240;         // px: the longest side of a thumbnail in the timeline
let keys = 0;

export function install(ctx) {
  C = ctx;
  const picker = C.$('attach-input');
  C.$('attach-btn').addEventListener('click', () => picker.click());
  picker.addEventListener('change', () => { addFiles([...picker.files]); picker.value = ''; });
  const zone = C.$('conv-view');
  let depth = 0; // dragenter/leave fire for every child: count them
  const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes('Files');
  zone.addEventListener('dragenter', (e) => { if (hasFiles(e)) { depth++; zone.classList.add('dropping'); } });
  zone.addEventListener('dragleave', () => { if (--depth <= 0) { depth = 0; zone.classList.remove('dropping'); } });
  zone.addEventListener('dragover', (e) => { if (hasFiles(e)) { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; } });
  zone.addEventListener('drop', (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    zone.classList.remove('dropping');
    addFiles([...e.dataTransfer.files]);
  });
  C.$('composer-input').addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  C.$('lightbox-close').addEventListener('click', () => C.$('lightbox').close());
  C.$('lightbox').addEventListener('click', (e) => { if (e.target === C.$('lightbox')) C.$('lightbox').close(); });
}

export function fmtSize(n) {
  if (!(n >= 0)) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

const isImage = (a) => Boolean(a?.thumbnail_url) || /^image\/(png|jpeg|gif|webp)$/.test(a?.content_type || '');

// ---- uploading

function addFiles(files) {
  const cid = C.S.current;
  if (!cid || !files.length) return;
  for (const file of files) {
    const item = { key: ++keys, cid, file, name: file.name || 'file', size: file.size, progress: 0,
                   upload: null, error: null, xhr: null,
                   preview: file.type.startsWith('image/') ? URL.createObjectURL(file) : null };
    tray.push(item);
    upload(item, true);
  }
  renderTray();
}

function upload(item, retry) {
  const xhr = new XMLHttpRequest();
  item.xhr = xhr;
  item.error = null;
  xhr.open('POST', `/api/uploads?name=${encodeURIComponent(item.name)}`);
  xhr.setRequestHeader('Content-Type', item.file.type || 'application/octet-stream');
  if (C.S.auth?.token) xhr.setRequestHeader('Authorization', `Bearer ${C.S.auth.token}`);
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    item.progress = e.loaded / e.total;
    const bar = document.querySelector(`#attach-tray [data-key="${item.key}"] progress`);
    if (bar) bar.value = Math.round(item.progress * 100);
  };
  xhr.onload = async () => {
    item.xhr = null;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 401 && retry && (await C.refreshAuth())) { upload(item, false); return; }
    if (xhr.status >= 200 && xhr.status < 300 && body?.id) {
      item.upload = body;
      item.progress = 1;
    } else if (xhr.status === 413) {
      item.error = body?.error?.message || 'File too large';
    } else {
      item.error = body?.error?.message || `Upload failed (${xhr.status})`;
    }
    renderTray();
  };
  xhr.onerror = () => { item.xhr = null; item.error = 'Network error'; renderTray(); };
  xhr.send(item.file);
}

function remove(item) {
  item.xhr?.abort();
  if (item.preview) URL.revokeObjectURL(item.preview);
  tray.splice(tray.indexOf(item), 1);
  renderTray();
}

function renderTray() {
  const box = C.$('attach-tray');
  const mine = tray.filter((x) => x.cid === C.S.current);
  box.hidden = !mine.length;
  box.replaceChildren(...mine.map((item) => {
    const state = item.error ? 'failed' : item.upload ? 'done' : 'uploading';
    return C.el('div', { class: `attach-item ${state}`, 'data-key': item.key, 'data-state': state, title: item.error || item.name },
      item.preview ? C.el('img', { class: 'attach-preview', src: item.preview, alt: '' }) : C.icon('file'),
      C.el('span', { class: 'attach-meta' },
        C.el('span', { class: 'attach-name', text: item.name }),
        item.error ? C.el('span', { class: 'attach-error', text: item.error })
          : item.upload ? C.el('span', { class: 'attach-size', text: fmtSize(item.upload.size ?? item.size) })
            : C.el('progress', { max: '100', value: String(Math.round(item.progress * 100)), 'aria-label': `Uploading ${item.name}` })),
      item.error ? C.el('button', { type: 'button', class: 'ghost small', onclick: () => { upload(item, true); renderTray(); } },
        C.icon('retry'), 'Retry') : null,
      C.el('button', { type: 'button', class: 'ghost icon-btn attach-remove', title: 'Remove', 'aria-label': `Remove ${item.name}`,
                       onclick: () => remove(item) }, C.icon('close')));
  }));
}

export function header() { renderTray(); }

// sendMessage asks: the uploads of this conversation become the message's attachments.
export function compose(conv) {
  const mine = tray.filter((x) => x.cid === conv.id);
  if (!mine.length) return {};
  if (mine.some((x) => !x.upload && !x.error)) return { block: 'Wait for the upload to finish' };
  const done = mine.filter((x) => x.upload);
  if (!done.length) return { block: 'The upload failed: retry or remove it' };
  return { extra: { attachments: done.map((x) => x.upload.id) },
           shown: { attachments: done.map((x) => x.upload) }, attachments: true };
}

export function afterSend(conv) {
  for (const item of tray.filter((x) => x.cid === conv.id && x.upload)) {
    if (item.preview) URL.revokeObjectURL(item.preview);
    tray.splice(tray.indexOf(item), 1);
  }
  renderTray();
}

export function signOut() {
  for (const item of tray.splice(0)) { item.xhr?.abort(); if (item.preview) URL.revokeObjectURL(item.preview); }
  for (const b of blobs.values()) if (b.url) URL.revokeObjectURL(b.url);
  blobs.clear();
  if (C.$('lightbox').open) C.$('lightbox').close();
}

// ---- downloading (with the bearer token) and showing

async function authFetch(url, retry = true) {
  const res = await fetch(url, { headers: C.S.auth?.token ? { Authorization: `Bearer ${C.S.auth.token}` } : {} });
  if (res.status === 401 && retry && (await C.refreshAuth())) return authFetch(url, false);
  if (!res.ok) throw new Error(res.status === 404 ? 'File not available' : `Download failed (${res.status})`);
  return res.blob();
}

function blobUrl(url) {
  let entry = blobs.get(url);
  if (!entry) {
    entry = { url: null, promise: null };
    entry.promise = authFetch(url).then((b) => { entry.url = URL.createObjectURL(b); return entry.url; });
    entry.promise.catch(() => blobs.delete(url)); // try again on the next render
    blobs.set(url, entry);
    if (blobs.size > CACHE_MAX) {
      const [oldest, old] = blobs.entries().next().value;
      if (old.url) URL.revokeObjectURL(old.url);
      blobs.delete(oldest);
    }
  }
  return entry;
}

const signed = (url) => /[?&]sig=/.test(url || '');

function imageInto(img, url) {
  if (signed(url)) { img.src = url; return; }
  const entry = blobUrl(url);
  if (entry.url) { img.src = entry.url; return; }
  entry.promise.then((u) => { img.src = u; img.classList.remove('loading'); },
    () => img.classList.add('broken'));
  img.classList.add('loading');
}

function thumbSize(a) {
  const w = a.width || 0;
  const h = a.height || 0;
  if (!w || !h) return { width: THUMB_BOX, height: Math.round(THUMB_BOX * 0.75) };
  const s = Math.min(1, THUMB_BOX / w, THUMB_BOX / h);
  return { width: Math.max(24, Math.round(w * s)), height: Math.max(24, Math.round(h * s)) };
}

function attachmentNode(a) {
  if (isImage(a)) {
    const { width, height } = thumbSize(a);
    const img = C.el('img', { class: 'thumb-img', alt: a.name || 'image', width, height });
    imageInto(img, a.thumbnail_url || a.url);
    return C.el('button', { type: 'button', class: 'attachment thumb', 'data-upload-id': a.id, title: a.name || 'image',
                            onclick: () => openLightbox(a) }, img);
  }
  return C.el('button', { type: 'button', class: 'attachment file-chip', 'data-upload-id': a.id,
                          title: `Download ${a.name || 'file'}`, onclick: () => download(a) },
  C.icon('file'),
  C.el('span', { class: 'file-meta' },
    C.el('span', { class: 'file-name', text: a.name || 'file' }),
    C.el('span', { class: 'file-size', text: fmtSize(a.size) })),
  C.icon('download'));
}

export function view(conv, m, out) {
  const list = (m.attachments || []).filter((a) => a && typeof a === 'object' && (a.url || a.thumbnail_url));
  if (!list.length || m.deleted) return;
  out.before.push(C.el('div', { class: 'attachments' }, ...list.map(attachmentNode)));
  if (!(m.content || '').trim()) out.noBody = true;
}

export function preview(m) {
  if (m.deleted || (m.content || '').trim() || !m.attachments?.length) return null;
  const a = m.attachments[0];
  return isImage(a) ? 'Photo' : a?.name || 'Attachment';
}

function openLightbox(a) {
  const dlg = C.$('lightbox');
  const img = C.$('lightbox-img');
  img.removeAttribute('src');
  img.alt = a.name || 'image';
  C.$('lightbox-name').textContent = a.name || '';
  C.$('lightbox-size').textContent = a.width && a.height ? `${a.width}×${a.height}, ${fmtSize(a.size)}` : fmtSize(a.size);
  C.$('lightbox-download').onclick = () => download(a);
  imageInto(img, a.url);
  dlg.showModal();
}

async function download(a) {
  try {
    const u = signed(a.url) ? a.url : await blobUrl(a.url).promise;
    const link = C.el('a', { href: u, download: a.name || 'download' });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (err) { C.toast(err.message); }
}
