// The wave-2 features of the web client (DESIGN §7), each in its own module, joined here into
// the few hooks app.js calls. app.js hands over its context once (state, helpers, actions);
// the modules never reach into app.js otherwise.
//
//   changes.js   edit / delete / reactions: frames, catch-up after reconnect, actions
//   composer.js  edit mode (↑), reply bar, @mention autocomplete
//   msgview.js   a message's quote, mentions, reactions, edited/deleted marks and its menu
//   search.js    message search, and jumping to a message in context
//   attach.js    uploads with progress, drag-and-drop, thumbnails, lightbox, file chips
//   settings.js  settings panel (notifications, privacy, blocked people), mute and block
//   notify.js    the Web Push opt-in (service worker, VAPID key, subscription)

import * as attach from './attach.js';
import * as changes from './changes.js';
import * as composer from './composer.js';
import * as msgview from './msgview.js';
import * as search from './search.js';
import * as settings from './settings.js';

const MODULES = [changes, composer, msgview, search, attach, settings];
const each = (name, ...args) => { for (const m of MODULES) m[name]?.(...args); };

export function installFeatures(ctx) {
  const C = { ...ctx, jumpTo: search.jumpTo };
  each('install', C);
  return {
    frames: changes.frames,
    onError: (p, ref) => changes.onError(p, ref),
    syncExtra: () => changes.syncExtra(),
    onReady: (p) => { changes.onReady(p); msgview.onReady(p); settings.onReady(p); },
    onSyncResult: (p) => changes.onSyncResult(p),
    syncMore: (p) => changes.syncMore(p),
    mergeConv: (conv, c) => settings.mergeConv(conv, c),
    start: () => each('start'),
    signOut: () => { composer.cancelModes(); each('signOut'); },
    beforeLogout: () => settings.beforeLogout(),
    header: (conv) => { composer.header(conv); search.header(conv); attach.header(conv); settings.header(conv); },
    noConversation: () => search.header(null),

    // sendMessage: true when the composer's text went elsewhere (an edit).
    beforeSend: (conv, content) => composer.beforeSend(conv, content),
    // {extra: fields for chat_message, shown: fields for the local copy, block: why not yet,
    //  attachments: true when the message may go without text}
    compose(conv) {
      const parts = [composer.compose(conv), attach.compose(conv)];
      const block = parts.find((p) => p.block)?.block;
      return {
        block,
        attachments: parts.some((p) => p.attachments),
        extra: Object.assign({}, ...parts.map((p) => p.extra || {})),
        shown: Object.assign({}, ...parts.map((p) => p.shown || {})),
      };
    },
    afterSend: (conv) => { composer.afterSend(conv); attach.afterSend(conv); },

    // One message in the timeline: {cls, replace, before, body, after, meta, menu}.
    view(conv, m) {
      const out = { cls: search.msgClass(m), replace: null, before: [], body: null, after: [], meta: [], menu: null, noBody: false };
      settings.view(conv, m, out);
      if (out.replace) return out;
      msgview.view(conv, m, out);
      if (!out.replace) attach.view(conv, m, out);
      return out;
    },
    // The conversation list's preview text of a last message, when not its content.
    preview: (m) => (m.deleted ? 'Message deleted' : attach.preview(m)),
    rowBadge: (conv) => msgview.rowBadge(conv),
  };
}
