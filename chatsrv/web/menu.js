// One floating popover at a time (message menu, reaction picker, conversation menu, mention
// list): placed under its anchor, closed by Escape, by a click outside, or by opening another.
// Content is built by the caller with DOM nodes (no HTML strings).

let open = null; // {node, anchor, onClose}

export function closePopover() {
  if (!open) return;
  const { node, onClose } = open;
  open = null;
  node.remove();
  onClose?.();
}

export const popoverOpen = () => open != null;

// Shows `node` near `anchor` (an element). `place`: 'below' (default) or 'above'; `align`:
// 'end' (right edges together, default) or 'start' (left edges).
export function showPopover(anchor, node, { place = 'below', align = 'end', onClose = null } = {}) {
  closePopover();
  node.classList.add('popover');
  document.body.append(node);
  const a = anchor.getBoundingClientRect();
  const w = node.offsetWidth;
  const h = node.offsetHeight;
  const left = Math.max(8, Math.min(align === 'start' ? a.left : a.right - w, window.innerWidth - w - 8));
  let top = place === 'above' ? a.top - h - 4 : a.bottom + 4;
  if (top + h > window.innerHeight - 8) top = a.top - h - 4; // no room below: flip
  if (top < 8) top = Math.min(a.bottom + 4, window.innerHeight - h - 8);
  node.style.left = `${Math.round(left)}px`; // CSSOM: allowed without 'unsafe-inline'
  node.style.top = `${Math.round(top)}px`;
  open = { node, anchor, onClose };
  return node;
}

document.addEventListener('mousedown', (e) => {
  if (open && !open.node.contains(e.target) && !open.anchor.contains(e.target)) closePopover();
}, true);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && open) { closePopover(); e.stopPropagation(); }
});
window.addEventListener('resize', closePopover);

// A vertical menu of {label, icon, action, danger, data} items (null items are skipped).
export function menuList(el, icon, items) {
  return el('div', { class: 'menu', role: 'menu' }, ...items.filter(Boolean).map((it) => el('button', {
    type: 'button', role: 'menuitem', class: `menu-item${it.danger ? ' danger-text' : ''}`,
    'data-action': it.data || null,
    onclick: () => { closePopover(); it.action(); },
  }, it.icon ? icon(it.icon) : null, it.label)));
}

// A modal "are you sure" built on <dialog>; resolves true for yes. Text via textContent.
export function confirmDialog(el, { title, text, yes = 'OK', danger = false }) {
  return new Promise((resolve) => {
    const dlg = el('dialog', { class: 'card confirm-dialog', id: 'confirm-dialog' });
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    dlg.append(
      el('h3', { text: title }),
      el('p', { text }),
      el('div', { class: 'dialog-actions' },
        el('button', { type: 'button', class: 'ghost', id: 'confirm-no', onclick: () => done(false) }, 'Cancel'),
        el('button', { type: 'button', class: danger ? 'danger' : 'primary', id: 'confirm-yes',
                       onclick: () => done(true) }, yes)));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
  });
}
