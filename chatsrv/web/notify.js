// Notifications opt-in (DESIGN §7 "Offline push"): register the service worker (sw.js,
// served at /sw.js with the whole origin as its scope), fetch the server's VAPID key,
// subscribe through the browser's push service and hand the subscription to
// POST /api/push/subscriptions. The subscription id is kept per browser profile
// (localStorage) so it can be deleted on opt-out and at log-out.
//
// The registration's own worker is awaited (not navigator.serviceWorker.ready, which waits
// for a worker controlling this page). A click on a notification reaches an open page as a
// message {type: "open_conversation", conversation_id}, or opens /?conversation=<id>.

let C = null;
const STORE_KEY = 'chatsrv.push';
const SW_URL = '/sw.js';
const STEP_TIMEOUT = 15000; // ms per browser step (activation, subscribe): a push service may hang

export function install(ctx) {
  C = ctx;
  navigator.serviceWorker?.addEventListener('message', (e) => {
    if (e.data?.type === 'open_conversation' && e.data.conversation_id && C.S.auth) open(e.data.conversation_id);
  });
}

async function open(cid) {
  if (!C.S.convs.get(cid)?.type) await C.loadConversations().catch(() => {});
  if (C.S.convs.get(cid)?.type) C.openConversation(cid);
}

// After sign-in: the conversation a notification was clicked for (/?conversation=<id>).
export function start() {
  const params = new URLSearchParams(location.search);
  const cid = params.get('conversation');
  if (!cid) return;
  params.delete('conversation');
  const rest = params.toString();
  history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
  open(cid);
}

export const supported = () => 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;

function stored() {
  try { return JSON.parse(localStorage.getItem(STORE_KEY)) || null; } catch { return null; }
}

// 'unsupported' | 'denied' | 'on' | 'off'
export function state() {
  if (!supported()) return 'unsupported';
  if (Notification.permission === 'denied') return 'denied';
  const s = stored();
  return s && s.user_id === C.me() && Notification.permission === 'granted' ? 'on' : 'off';
}

function within(promise, what) {
  let t = 0;
  return Promise.race([promise, new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} took too long`)), STEP_TIMEOUT);
  })]).finally(() => clearTimeout(t));
}

function keyBytes(b64url) {
  const b64 = b64url.replace(/-/g, '+').replace(/_/g, '/');
  const raw = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

const sameKey = (buf, bytes) => {
  if (!buf) return false;
  const a = new Uint8Array(buf);
  return a.length === bytes.length && a.every((x, i) => x === bytes[i]);
};

async function activeWorker(reg) {
  if (reg.active) return reg.active;
  const w = reg.installing || reg.waiting;
  if (!w) throw new Error('The service worker did not start');
  await within(new Promise((resolve, reject) => {
    const check = () => {
      if (w.state === 'activated') resolve();
      if (w.state === 'redundant') reject(new Error('The service worker failed to install'));
    };
    w.addEventListener('statechange', check);
    check();
  }), 'Starting the service worker');
  return reg.active;
}

// Each step's name, for the error a user (and a test) sees.
export async function enable() {
  if (!supported()) throw new Error('This browser cannot show notifications');
  const perm = await Notification.requestPermission();
  if (perm !== 'granted') throw new Error('Notifications are blocked for this site in the browser');
  const reg = await navigator.serviceWorker.register(SW_URL);
  await activeWorker(reg);
  const { key } = await C.api('GET', '/api/push/vapid-public-key');
  const appKey = keyBytes(key);
  let sub = await reg.pushManager.getSubscription();
  if (sub && !sameKey(sub.options?.applicationServerKey, appKey)) { await sub.unsubscribe(); sub = null; }
  try {
    sub ||= await within(reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: appKey }),
      'Subscribing with the browser\'s push service');
  } catch (err) {
    throw new Error(`The browser's push service refused: ${err.message}`);
  }
  const j = sub.toJSON();
  const r = await C.api('POST', '/api/push/subscriptions', { endpoint: j.endpoint, keys: { p256dh: j.keys.p256dh, auth: j.keys.auth } });
  localStorage.setItem(STORE_KEY, JSON.stringify({ id: r.id, endpoint: j.endpoint, user_id: C.me() }));
  return r.id;
}

// Opt out: the server forgets the subscription, the browser drops it.
export async function disable() {
  const s = stored();
  localStorage.removeItem(STORE_KEY);
  if (s?.id && s.user_id === C.me()) {
    await C.api('DELETE', `/api/push/subscriptions/${encodeURIComponent(s.id)}`).catch(() => {});
  }
  const reg = 'serviceWorker' in navigator ? await navigator.serviceWorker.getRegistration('/') : null;
  const sub = await reg?.pushManager.getSubscription();
  await sub?.unsubscribe().catch(() => {});
}

// Before log-out (the token still works): this browser stops getting the account's pushes.
export async function beforeLogout() {
  if (stored()) await disable();
}
