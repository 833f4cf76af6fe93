// Inline SVG icons for every piece of UI state (ticks, pending, failed, calls), so nothing
// depends on emoji or symbol fonts being installed. Drawn on a 24×24 grid, stroked with
// currentColor: colour comes from CSS. Built with createElementNS (no innerHTML).

const SVG = 'http://www.w3.org/2000/svg';

// name -> list of shapes: a string is a path's `d`, an object is a circle {cx, cy, r}.
const HANDSET = 'M5 3.5h3.5l2 5-2.5 1.5a11 11 0 0 0 6 6l1.5-2.5 5 2v3.5a2 2 0 0 1-2 2A17 17 0 0 1 3 5.5a2 2 0 0 1 2-2z';
const SHAPES = {
  check: ['M4.5 12.5l4.5 4.5L19.5 6.5'],
  checks: ['M1.5 12.5l4.5 4.5L16.5 6.5', 'M11.5 16l1 1L23 6.5'],
  clock: [{ cx: 12, cy: 12, r: 9 }, 'M12 7v5.5l3.5 2'],
  alert: [{ cx: 12, cy: 12, r: 9 }, 'M12 7.5v5.5', 'M12 16.5v.01'],
  phone: [HANDSET],
  'phone-in': [HANDSET, 'M21.5 2.5l-6 6', 'M15.5 3.5v5h5'],
  'phone-out': [HANDSET, 'M15.5 8.5l6-6', 'M16.5 2.5h5v5'],
  'phone-missed': [HANDSET, 'M15.5 2.5l6 6', 'M21.5 2.5l-6 6'],
  'phone-off': [HANDSET, 'M2.5 2.5l19 19'],
  video: ['M3.5 6.5h10a2 2 0 0 1 2 2v7a2 2 0 0 1-2 2h-10a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2z', 'M15.5 10.5l6-3.5v10l-6-3.5'],
  users: [{ cx: 9, cy: 8, r: 3.5 }, 'M2.5 20a6.5 6.5 0 0 1 13 0', 'M16 4.7a3.5 3.5 0 0 1 0 6.6', 'M18 14.2a6.5 6.5 0 0 1 3.5 5.8'],
  back: ['M19.5 12h-15', 'M10.5 18l-6-6 6-6'],
  close: ['M6 6l12 12', 'M18 6L6 18'],
  plus: ['M12 5v14', 'M5 12h14'],
  leave: ['M14.5 4.5h4a1 1 0 0 1 1 1v13a1 1 0 0 1-1 1h-4', 'M9.5 8l-4 4 4 4', 'M5.5 12h10'],
  chat: ['M4.5 4.5h15a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1h-9l-5 4v-4h-1a1 1 0 0 1-1-1v-10a1 1 0 0 1 1-1z'],
  retry: ['M19.5 12a7.5 7.5 0 1 1-2.2-5.3', 'M19.5 4v4h-4'],
};

export function icon(name, { title = null, cls = '' } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon icon-${name}${cls ? ` ${cls}` : ''}`);
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  if (title) {
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', title);
    const t = document.createElementNS(SVG, 'title');
    t.textContent = title;
    svg.append(t);
  } else {
    svg.setAttribute('aria-hidden', 'true');
  }
  for (const shape of SHAPES[name] || []) {
    const node = document.createElementNS(SVG, typeof shape === 'string' ? 'path' : 'circle');
    if (typeof shape === 'string') node.setAttribute('d', shape);
    else for (const [k, v] of Object.entries(shape)) node.setAttribute(k, String(v));
    svg.append(node);
  }
  return svg;
}

// Replace the content of every element carrying data-icon="name" (static markup in index.html).
export function hydrateIcons(root = document) {
  for (const node of root.querySelectorAll('[data-icon]')) node.prepend(icon(node.dataset.icon));
}
