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
  // wave 2: message actions, attachments, settings (issue 14.6, 15.6)
  more: [{ cx: 5, cy: 12, r: 1 }, { cx: 12, cy: 12, r: 1 }, { cx: 19, cy: 12, r: 1 }],
  reply: ['M9.5 14.5l-5-5 5-5', 'M4.5 9.5h9a6 6 0 0 1 6 6v4'],
  edit: ['M4 20h4L19 9l-4-4L4 16v4z', 'M13.5 6.5l4 4'],
  trash: ['M4 7h16', 'M9.5 7V4.5h5V7', 'M6.5 7l1 13h9l1-13', 'M10 11v5.5', 'M14 11v5.5'],
  smile: [{ cx: 12, cy: 12, r: 9 }, 'M8.5 14.5a4.5 4.5 0 0 0 7 0', 'M9 9.5v.01', 'M15 9.5v.01'],
  clip: ['M20 11.5l-8.2 8.2a5 5 0 0 1-7.1-7.1l8.6-8.6a3.4 3.4 0 0 1 4.8 4.8l-8.6 8.6a1.7 1.7 0 0 1-2.4-2.4l7.9-7.9'],
  file: ['M6.5 3h7l5 5v12.5a.5.5 0 0 1-.5.5h-11.5a.5.5 0 0 1-.5-.5v-17a.5.5 0 0 1 .5-.5z', 'M13.5 3v5h5'],
  download: ['M12 4v11', 'M7 10.5l5 5 5-5', 'M5 20h14'],
  search: [{ cx: 11, cy: 11, r: 6.5 }, 'M16 16l4.5 4.5'],
  settings: [{ cx: 12, cy: 12, r: 3 }, 'M12 2.5v3', 'M12 18.5v3', 'M2.5 12h3', 'M18.5 12h3', 'M5.3 5.3l2.1 2.1', 'M16.6 16.6l2.1 2.1', 'M5.3 18.7l2.1-2.1', 'M16.6 7.4l2.1-2.1'],
  bell: ['M6 16.5V11a6 6 0 0 1 12 0v5.5l1.5 2h-15z', 'M10 21h4'],
  'bell-off': ['M6 16.5V11a6 6 0 0 1 12 0v5.5l1.5 2h-15z', 'M10 21h4', 'M3 3l18 18'],
  block: [{ cx: 12, cy: 12, r: 9 }, 'M5.6 5.6l12.8 12.8'],
  at: [{ cx: 12, cy: 12, r: 3.5 }, 'M15.5 12v1.5a2.5 2.5 0 0 0 5 0V12a8.5 8.5 0 1 0-3.3 6.7'],
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
