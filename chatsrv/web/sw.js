// chatsrv service worker: shows a notification for each Web Push (docs/protocol.md,
// "Offline push"). Served at /sw.js so it may control the whole origin. The page registers
// it and subscribes (navigator.serviceWorker.register("/sw.js"), then
// pushManager.subscribe({userVisibleOnly: true, applicationServerKey: <GET
// /api/push/vapid-public-key>}) and POST /api/push/subscriptions with subscription.toJSON()).
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function parse(event) {
  try {
    return event.data ? event.data.json() : {};
  } catch {
    return { body: event.data.text() };
  }
}

self.addEventListener("push", (event) => {
  const push = parse(event);
  const title = push.title || "New message";
  const options = {
    body: push.body || "New message",
    // one notification per conversation: a later push replaces it (as the Topic header
    // does at the push service)
    tag: push.conversation_id ? `conversation:${push.conversation_id}` : "chatsrv",
    renotify: true,
    icon: "/web/favicon.svg",
    data: { conversation_id: push.conversation_id || null, message_id: push.message_id || null },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
    if (open) {
      // the page decides what to show: {type: "open_conversation", conversation_id}
      open.postMessage({ type: "open_conversation", conversation_id: data.conversation_id });
      return open.focus();
    }
    const target = data.conversation_id
      ? `/?conversation=${encodeURIComponent(data.conversation_id)}` : "/";
    return self.clients.openWindow(target);
  })());
});
