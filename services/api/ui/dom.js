// Small DOM and formatting helpers. Text is always set as text (never parsed as HTML).

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === 'text') el.textContent = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) if (c) el.append(c);
  return el;
}

const viewerFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export function utcText(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace('.000Z', 'Z') + ' (UTC)';
}

// An instant in the viewer's zone, with the UTC instant on hover.
export function time(iso, opts = {}) {
  if (!iso) return h('span', { class: 'muted', text: '—' });
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', { text: String(iso) });
  const fmt = opts.timeZone
    ? new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium', timeZone: opts.timeZone })
    : viewerFormat;
  const text = fmt.format(d) + (opts.relative ? ` (${relative(d)})` : '');
  return h('time', { datetime: d.toISOString(), title: utcText(iso), text });
}

export function relative(d) {
  const s = Math.round((new Date(d).getTime() - Date.now()) / 1000);
  const a = Math.abs(s);
  const unit = a < 60 ? [s, 'second'] : a < 3600 ? [Math.round(s / 60), 'minute']
    : a < 86400 ? [Math.round(s / 3600), 'hour'] : [Math.round(s / 86400), 'day'];
  return new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' }).format(unit[0], unit[1]);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  if (seconds < 0.001) return '< 1 ms';
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

export function runSeconds(run) {
  if (!run.started_at) return null;
  return (new Date(run.finished_at) - new Date(run.started_at)) / 1000;
}

export function offsetText(seconds) {
  const sign = seconds < 0 ? '−' : '+';
  const a = Math.abs(seconds);
  const hh = String(Math.floor(a / 3600)).padStart(2, '0');
  const mm = String(Math.floor((a % 3600) / 60)).padStart(2, '0');
  return `UTC${sign}${hh}:${mm}`;
}

export function pretty(value) {
  return h('pre', { class: 'json', tabindex: '0', text: JSON.stringify(value, null, 2) });
}

export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}`, text });
}

export function outcome(run) {
  if (run.success) return badge('success', 'ok');
  if (run.attempt === 0) return badge('skipped', 'warn');
  return badge('failure', 'bad');
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

export function table(headers, rows, opts = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: opts.class || '' },
      opts.caption ? h('caption', { class: 'sr-only', text: opts.caption }) : null,
      h('thead', {}, h('tr', {}, headers.map((c) => h('th', { scope: 'col', text: c })))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'empty', text: opts.empty || 'Nothing here yet.' })))));
}

// A status line for errors and confirmations; the API's message (and fields) are shown as sent.
export function notice(el, kind, message, details) {
  clear(el);
  if (!message) { el.hidden = true; return; }
  el.hidden = false;
  el.className = `notice ${kind}`;
  el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  append(el, [h('span', { text: message })]);
  if (Array.isArray(details) && details.length) {
    append(el, [h('ul', {}, details.map((d) => h('li', { text: `${d.field}: ${d.message}` })))]);
  }
}

// A modal confirmation (native <dialog>: focus is trapped and Escape cancels). Resolves to the form's
// values, or null when cancelled.
export function confirmDialog({ title, body, confirm = 'Confirm', danger = false, fields = [] }) {
  return new Promise((resolve) => {
    const inputs = fields.map((f) => {
      const id = `dlg-${f.name}`;
      const input = f.multiline
        ? h('textarea', { id, name: f.name, rows: 5, spellcheck: 'false', value: f.value ?? '' })
        : h('input', { id, name: f.name, type: f.type || 'text', value: f.value ?? '', min: f.min, max: f.max, required: f.required });
      return h('div', { class: 'field' }, h('label', { for: id, text: f.label }), input,
        f.hint ? h('p', { class: 'hint', text: f.hint }) : null);
    });
    const error = h('div', { class: 'notice error', hidden: true });
    const form = h('form', { method: 'dialog' },
      h('h2', { text: title }),
      body ? h('p', { text: body }) : null,
      inputs, error,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', value: 'cancel', 'data-action': 'cancel', text: 'Cancel' }),
        h('button', { type: 'submit', class: danger ? 'danger' : 'primary', 'data-action': 'confirm', text: confirm })));
    const dlg = h('dialog', { class: 'confirm', 'aria-label': title }, form);
    let done = false;
    const finish = (v) => { if (done) return; done = true; dlg.close(); dlg.remove(); resolve(v); };
    form.querySelector('[data-action=cancel]').addEventListener('click', () => finish(null));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); finish(null); });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const values = {};
      for (const f of fields) values[f.name] = form.elements[f.name].value;
      if (fields.some((f) => f.validate)) {
        for (const f of fields) {
          const msg = f.validate && f.validate(values[f.name]);
          if (msg) { notice(error, 'error', `${f.label}: ${msg}`); return; }
        }
      }
      finish(values);
    });
    document.body.append(dlg);
    dlg.showModal();
    const first = dlg.querySelector('input, textarea') || dlg.querySelector('[data-action=confirm]');
    first.focus();
  });
}

export function field(id, label, input, hint) {
  return h('div', { class: 'field', 'data-field': id },
    h('label', { for: id, text: label }),
    input,
    hint ? h('p', { class: 'hint', id: `${id}-hint`, text: hint }) : null,
    h('p', { class: 'field-error', id: `err-${id}`, role: 'alert', hidden: true }));
}

export function showFieldError(root, name, message) {
  const el = root.querySelector(`#err-${CSS.escape(name)}`);
  const input = root.querySelector(`#${CSS.escape(name)}`);
  if (el) {
    el.textContent = message || '';
    el.hidden = !message;
  }
  if (input) {
    if (message) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', `err-${name}`);
    } else {
      input.removeAttribute('aria-invalid');
    }
  }
  return !!el;
}

export function link(href, text, attrs = {}) {
  return h('a', { href, ...attrs, text });
}
