// /api/docs: the OpenAPI document of this server (/api/openapi.json) as a page. No
// dependency: every path and method with its parameters, request body and responses, and
// every schema, with `$ref`s resolved into links and tables. The DOM is built with
// textContent only (nothing from the document is parsed as HTML), so the page runs under
// the web client's CSP (script-src 'self', no inline anything).

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const MAX_DEPTH = 4; // nested inline objects shown as tables down to this depth

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) node.append(c);
  return node;
}

const code = (text, cls) => el('code', { class: cls, text: String(text) });
const anchor = (...parts) => parts.join('-').replace(/[^A-Za-z0-9_]+/g, '-').replace(/^-+|-+$/g, '');
export const opAnchor = (method, path) => anchor('op', method, path);
const schemaAnchor = (name) => anchor('schema', name);

// ---- $ref resolution: local JSON pointers (#/components/schemas/Name, or any #/a/b)

function pointer(doc, ref) {
  if (typeof ref !== 'string' || !ref.startsWith('#/')) return undefined;
  let node = doc;
  for (const raw of ref.slice(2).split('/')) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (node == null || typeof node !== 'object' || !(key in node)) return undefined;
    node = node[key];
  }
  return node;
}

const refName = (ref) => decodeURIComponent(ref.split('/').pop());
const isSchemaRef = (ref) => typeof ref === 'string' && ref.startsWith('#/components/schemas/');

// Follow $refs (parameters, responses, bodies may be refs too); a cycle or a missing
// target gives the last object seen.
function deref(doc, obj) {
  const seen = new Set();
  while (obj && typeof obj === 'object' && typeof obj.$ref === 'string' && !seen.has(obj.$ref)) {
    seen.add(obj.$ref);
    const next = pointer(doc, obj.$ref);
    if (next === undefined) break;
    obj = next;
  }
  return obj;
}

// ---- schemas as text: `string | null`, `array of MemberOut`, `object of string → integer`

function join(nodes, sep) {
  const out = [];
  nodes.forEach((n, i) => { if (i) out.push(sep); out.push(n); });
  return out;
}

function typeNode(doc, schema) {
  if (schema === true || schema == null) return el('span', { class: 'type', text: 'any' });
  if (schema === false) return el('span', { class: 'type', text: 'never' });
  if (schema.$ref) {
    if (isSchemaRef(schema.$ref)) {
      return el('a', { class: 'type ref', href: `#${schemaAnchor(refName(schema.$ref))}`,
                       text: refName(schema.$ref) });
    }
    return typeNode(doc, deref(doc, schema));
  }
  for (const key of ['anyOf', 'oneOf']) {
    if (Array.isArray(schema[key])) {
      // null last: "string | null" reads as "a string, or null"
      const parts = [...schema[key]].sort((a, b) => (a?.type === 'null') - (b?.type === 'null'));
      return el('span', { class: 'type' }, join(parts.map((s) => typeNode(doc, s)), ' | '));
    }
  }
  if (Array.isArray(schema.allOf)) {
    return el('span', { class: 'type' }, join(schema.allOf.map((s) => typeNode(doc, s)), ' & '));
  }
  if ('const' in schema) return code(JSON.stringify(schema.const), 'type literal');
  if (Array.isArray(schema.enum)) {
    return el('span', { class: 'type' },
      join(schema.enum.map((v) => code(JSON.stringify(v), 'literal')), ' | '));
  }
  if (Array.isArray(schema.type)) {
    return el('span', { class: 'type' },
      join(schema.type.map((t) => typeNode(doc, { ...schema, type: t })), ' | '));
  }
  if (schema.type === 'array') {
    return el('span', { class: 'type' }, 'array of ', typeNode(doc, schema.items));
  }
  if (schema.type === 'object' || schema.properties || schema.additionalProperties) {
    if (schema.properties) return el('span', { class: 'type', text: 'object' });
    if (schema.additionalProperties !== undefined && schema.additionalProperties !== false) {
      return el('span', { class: 'type' }, 'object of string → ',
        typeNode(doc, schema.additionalProperties));
    }
    return el('span', { class: 'type', text: 'object' });
  }
  const base = schema.type || 'any';
  return el('span', { class: 'type', text: schema.format ? `${base} (${schema.format})` : base });
}

// What else a schema says: bounds, pattern, default, description.
function notes(schema) {
  if (!schema || typeof schema !== 'object') return [];
  const out = [];
  const bound = (lo, hi, unit) => {
    if (lo !== undefined && hi !== undefined) out.push(`${lo}–${hi}${unit}`);
    else if (lo !== undefined) out.push(`≥ ${lo}${unit}`);
    else if (hi !== undefined) out.push(`≤ ${hi}${unit}`);
  };
  bound(schema.minimum, schema.maximum, '');
  if (schema.exclusiveMinimum !== undefined) out.push(`> ${schema.exclusiveMinimum}`);
  if (schema.exclusiveMaximum !== undefined) out.push(`< ${schema.exclusiveMaximum}`);
  bound(schema.minLength, schema.maxLength, ' characters');
  bound(schema.minItems, schema.maxItems, ' items');
  const parts = out.map((t) => el('span', { class: 'note', text: t }));
  if (schema.pattern) parts.push(el('span', { class: 'note' }, 'pattern ', code(schema.pattern)));
  if ('default' in schema) {
    parts.push(el('span', { class: 'note' }, 'default ', code(JSON.stringify(schema.default))));
  }
  if (schema.description) parts.push(el('span', { class: 'desc', text: schema.description }));
  return parts;
}

// The object a schema describes, if any, with $refs and nullable wrappers looked through:
// the fields of `MessageOut | null` are MessageOut's.
function objectOf(doc, schema, seen = new Set()) {
  if (!schema || typeof schema !== 'object') return null;
  if (schema.$ref) {
    if (seen.has(schema.$ref)) return null;
    seen.add(schema.$ref);
    return objectOf(doc, pointer(doc, schema.$ref), seen);
  }
  if (schema.properties) return schema;
  for (const key of ['anyOf', 'oneOf']) {
    if (Array.isArray(schema[key])) {
      const found = schema[key].filter((s) => s?.type !== 'null');
      if (found.length === 1) return objectOf(doc, found[0], seen);
    }
  }
  return null;
}

function fieldsTable(doc, schema, depth = 0) {
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([name, prop]) => {
    // an inline object (not a $ref) gets its own table inside the row
    const inline = prop && !prop.$ref && prop.properties && depth < MAX_DEPTH
      ? fieldsTable(doc, prop, depth + 1) : null;
    return el('tr', { 'data-field': name },
      el('td', { class: 'field' }, code(name),
        required.has(name) ? el('span', { class: 'required', title: 'required', text: 'required' }) : null),
      el('td', {}, typeNode(doc, prop)),
      el('td', { class: 'notes' }, notes(prop), inline));
  });
  if (!rows.length) return el('p', { class: 'empty', text: 'no fields' });
  return el('table', { class: 'fields' },
    el('thead', {}, el('tr', {}, el('th', { text: 'field' }), el('th', { text: 'type' }),
      el('th', { text: 'notes' }))),
    el('tbody', {}, rows));
}

// A body or response schema: its type, then its fields (a $ref's resolved one level).
function schemaBlock(doc, schema) {
  const obj = objectOf(doc, schema);
  return el('div', { class: 'schema' },
    el('div', { class: 'schema-type' }, typeNode(doc, schema)),
    obj ? fieldsTable(doc, obj) : null);
}

// `shown`: the $refs this operation has expanded already (a 200 and a 201 of the same
// body show its fields once).
function contentBlocks(doc, content, expand, shown) {
  return Object.entries(content || {}).map(([type, media]) => {
    const ref = media.schema?.$ref;
    const full = expand && !(ref && shown.has(ref));
    if (full && ref) shown.add(ref);
    return el('div', { class: 'media' },
      el('span', { class: 'media-type', text: type }),
      media.schema ? (full ? schemaBlock(doc, media.schema)
        : el('div', { class: 'schema-type' }, typeNode(doc, media.schema),
          expand ? el('span', { class: 'note as-above', text: '(fields as above)' }) : null)) : null);
  });
}

// A path that line-breaks after its slashes, never inside a name.
function pathNode(path, cls) {
  const parts = path.split('/');
  return el('code', { class: cls },
    parts.map((part, i) => (i < parts.length - 1 ? [part, '/', el('wbr')] : part)));
}

// ---- operations

function parametersTable(doc, params) {
  return el('table', { class: 'params' },
    el('thead', {}, el('tr', {}, ['name', 'in', 'type', 'notes'].map((t) => el('th', { text: t })))),
    el('tbody', {}, params.map((raw) => {
      const p = deref(doc, raw);
      return el('tr', { 'data-param': p.name },
        el('td', { class: 'field' }, code(p.name),
          p.required ? el('span', { class: 'required', text: 'required' }) : null),
        el('td', { text: p.in }),
        el('td', {}, typeNode(doc, p.schema)),
        el('td', { class: 'notes' }, notes(p.schema),
          p.description ? el('span', { class: 'desc', text: p.description }) : null));
    })));
}

function operationSection(doc, path, method, op, shared) {
  const params = [...(shared || []), ...(op.parameters || [])];
  const secured = (op.security ?? doc.security ?? []).length > 0;
  const body = deref(doc, op.requestBody);
  const responses = Object.entries(op.responses || {});
  const shown = new Set();
  return el('section', { class: 'op', id: opAnchor(method, path), 'data-method': method,
                         'data-path': path },
    el('h3', {},
      el('span', { class: `method ${method}`, text: method.toUpperCase() }), ' ',
      pathNode(path, 'path'),
      secured ? el('span', { class: 'lock', title: 'needs Authorization: Bearer <token>', text: 'bearer' }) : null,
      op.deprecated ? el('span', { class: 'deprecated', text: 'deprecated' }) : null),
    op.summary ? el('p', { class: 'summary', text: op.summary }) : null,
    op.description ? el('p', { class: 'description', text: op.description }) : null,
    params.length ? [el('h4', { text: 'Parameters' }), parametersTable(doc, params)] : null,
    body ? [el('h4', {}, 'Request body', body.required ? el('span', { class: 'required', text: 'required' }) : null),
            contentBlocks(doc, body.content, true, shown)] : null,
    el('h4', { text: 'Responses' }),
    el('dl', { class: 'responses' }, responses.map(([status, raw]) => {
      const r = deref(doc, raw);
      const ok = /^[23]/.test(status);
      return [el('dt', { class: ok ? 'ok' : 'fail', 'data-status': status }, code(status)),
              el('dd', {}, el('span', { text: r.description || '' }),
                contentBlocks(doc, r.content, ok, shown))];
    })));
}

function groupOf(path) {
  const parts = path.split('/').filter(Boolean);
  return (parts[0] === 'api' ? parts[1] : parts[0]) || '/';
}

export function render(doc) {
  const ops = [];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of METHODS) if (item[method]) ops.push({ path, method, op: item[method], item });
  }
  const groups = new Map();
  for (const o of ops) {
    const g = groupOf(o.path);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(o);
  }
  const info = doc.info || {};
  document.title = `${info.title || 'API'} ${info.version || ''} · API reference`.trim();
  document.getElementById('api-version').textContent = info.version ? `v${info.version}` : '';
  document.getElementById('api-description').textContent = info.description || '';

  const toc = document.getElementById('toc');
  const main = document.getElementById('operations');
  toc.replaceChildren();
  main.replaceChildren();
  for (const [group, list] of groups) {
    const id = anchor('group', group);
    toc.append(el('li', { class: 'toc-group' }, el('a', { href: `#${id}`, text: group }),
      el('ul', {}, list.map(({ path, method, op }) => el('li', { 'data-op': opAnchor(method, path) },
        el('a', { href: `#${opAnchor(method, path)}`, title: op.summary || '' },
          el('span', { class: `method ${method}`, text: method.toUpperCase() }),
          pathNode(path, 'toc-path')))))));
    main.append(el('section', { class: 'group', id },
      el('h2', { text: group }),
      list.map(({ path, method, op, item }) => operationSection(doc, path, method, op, item.parameters))));
  }

  const schemas = doc.components?.schemas || {};
  const names = Object.keys(schemas).sort();
  document.getElementById('schema-list').replaceChildren(...names.map((name) => {
    const s = schemas[name];
    const obj = objectOf(doc, s);
    return el('section', { class: 'schema-def', id: schemaAnchor(name), 'data-schema': name },
      el('h3', {}, code(name)),
      s.description ? el('p', { class: 'desc', text: s.description }) : null,
      obj ? fieldsTable(doc, obj) : el('div', { class: 'schema-type' }, typeNode(doc, s)));
  }));
  document.getElementById('schemas').hidden = names.length === 0;
  if (names.length) {
    toc.append(el('li', { class: 'toc-group' }, el('a', { href: '#schemas', text: 'schemas' })));
  }
  return { operations: ops.length, paths: Object.keys(doc.paths || {}).length, schemas: names.length };
}

function filterOps(text) {
  const q = text.trim().toLowerCase();
  for (const section of document.querySelectorAll('.op')) {
    const hay = `${section.dataset.method} ${section.dataset.path} ${section.querySelector('.summary')?.textContent || ''}`.toLowerCase();
    const show = !q || q.split(/\s+/).every((w) => hay.includes(w));
    section.hidden = !show;
    const entry = document.querySelector(`[data-op="${section.id}"]`);
    if (entry) entry.hidden = !show;
  }
  for (const group of document.querySelectorAll('.group')) {
    group.hidden = !group.querySelector('.op:not([hidden])');
  }
  for (const group of document.querySelectorAll('#toc .toc-group')) {
    const entries = group.querySelectorAll('li[data-op]');
    group.hidden = entries.length > 0 && ![...entries].some((li) => !li.hidden);
  }
}

async function main() {
  const status = document.getElementById('status');
  try {
    const resp = await fetch('/api/openapi.json', { headers: { Accept: 'application/json' } });
    if (!resp.ok) throw new Error(`GET /api/openapi.json: HTTP ${resp.status}`);
    const counts = render(await resp.json());
    status.textContent = `${counts.operations} operations on ${counts.paths} paths, ${counts.schemas} schemas.`;
    document.body.dataset.loaded = 'true';
    if (location.hash) document.getElementById(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();
  } catch (err) {
    status.textContent = `Could not load the API description: ${err.message}`;
    status.classList.add('error');
    document.body.dataset.loaded = 'error';
  }
  document.getElementById('filter').addEventListener('input', (e) => filterOps(e.target.value));
}

main();
