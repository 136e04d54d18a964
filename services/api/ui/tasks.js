// Tasks: the searchable, filterable, keyset-paginated list, and the create/edit form with live validation and
// a preview of the next fires (POST /schedules/preview, the scheduler's own engine).
import { h, clear, time, table, notice, badge, debounce, field, showFieldError, link } from './dom.js';
import { get, post, patch, qs } from './api.js';
import { describe } from './describe.js';

const STATUSES = ['active', 'paused', 'canceled', 'completed'];
const KINDS = ['cron', 'rrule', 'once', 'event'];

function select(id, label, options, value) {
  return h('select', { id, name: id, 'aria-label': label },
    options.map(([v, text]) => h('option', { value: v, selected: v === value ? 'selected' : null, text })));
}

export function renderList(main, _args, ctx) {
  const p = ctx.params;
  const filters = {
    q: p.get('q') || '', status: p.get('status') || '', schedule_kind: p.get('schedule_kind') || '',
    timezone: p.get('timezone') || '', created_by: p.get('created_by') || '',
  };
  const status = h('div', { hidden: true });
  const search = h('input', { id: 'f-q', name: 'q', type: 'search', value: filters.q, placeholder: 'Title or task id', autocomplete: 'off' });
  const tzSelect = select('f-timezone', 'Zone', [['', 'Any zone']], filters.timezone);
  const ownerSelect = select('f-created_by', 'Owner', [['', 'Any owner']], filters.created_by);
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter tasks' },
    h('div', { class: 'field grow' }, h('label', { for: 'f-q', text: 'Search' }), search),
    h('div', { class: 'field' }, h('label', { for: 'f-status', text: 'Status' }),
      select('f-status', 'Status', [['', 'Any status'], ...STATUSES.map((s) => [s, s])], filters.status)),
    h('div', { class: 'field' }, h('label', { for: 'f-schedule_kind', text: 'Schedule kind' }),
      select('f-schedule_kind', 'Schedule kind', [['', 'Any kind'], ...KINDS.map((s) => [s, s])], filters.schedule_kind)),
    h('div', { class: 'field' }, h('label', { for: 'f-timezone', text: 'Zone' }), tzSelect),
    ctx.me.admin ? h('div', { class: 'field' }, h('label', { for: 'f-created_by', text: 'Owner' }), ownerSelect) : null,
    h('div', { class: 'field' }, h('span', { class: 'label-spacer', 'aria-hidden': 'true', text: ' ' }),
      h('button', { type: 'submit', class: 'secondary', text: 'Apply' })));
  const body = h('div', { id: 'task-list' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  main.append(
    h('div', { class: 'page-head' }, h('h1', { text: 'Tasks' }),
      h('a', { class: 'button primary', href: '#/tasks/new', id: 'new-task', text: 'New task' })),
    form, status, body, pager);

  get('/console/tasks/facets').then((f) => {
    for (const tz of f.timezones) tzSelect.append(h('option', { value: tz, selected: tz === filters.timezone ? 'selected' : null, text: tz }));
    for (const o of f.owners) ownerSelect.append(h('option', { value: o.id, selected: o.id === filters.created_by ? 'selected' : null, text: o.name }));
  }).catch(() => {});

  const apply = () => {
    const next = {
      q: search.value.trim(), status: form.elements['f-status'].value, schedule_kind: form.elements['f-schedule_kind'].value,
      timezone: tzSelect.value, created_by: ctx.me.admin ? ownerSelect.value : '',
    };
    ctx.navigate(`#/tasks${qs(next)}`);
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  for (const s of form.querySelectorAll('select')) s.addEventListener('change', apply);

  // Keyset pages: a stack of the cursors that led to each page seen so far.
  const cursors = [null];
  let stopped = false;
  async function load() {
    const after = cursors[cursors.length - 1];
    try {
      const page = await get(`/console/tasks${qs({ ...filters, after, limit: 25 })}`);
      if (stopped) return;
      notice(status, 'error', null);
      const rows = page.items.map((t) => h('tr', { 'data-task-id': t.id },
        h('td', {}, link(`#/tasks/${t.id}`, t.title, { class: 'task-link' })),
        h('td', {}, badge(t.status)),
        h('td', { title: t.schedule_expr }, h('span', { class: 'kind', text: t.schedule_kind }), ' ', describe(t.schedule_kind, t.schedule_expr)),
        h('td', { text: t.timezone }),
        h('td', { text: t.owner_name || t.created_by.slice(0, 8) }),
        h('td', {}, time(t.next_run_at)),
        h('td', {}, time(t.created_at))));
      clear(body).append(table(['Title', 'Status', 'Schedule', 'Zone', 'Owner', 'Next run', 'Created'], rows,
        { caption: 'Tasks', empty: 'No task matches these filters.' }));
      clear(pager).append(
        h('button', { type: 'button', class: 'secondary', disabled: cursors.length <= 1, id: 'prev-page', text: '← Newer',
          onclick: () => { cursors.pop(); load(); } }),
        h('span', { class: 'muted', text: `Page ${cursors.length}` }),
        h('button', { type: 'button', class: 'secondary', disabled: !page.next_cursor, id: 'next-page', text: 'Older →',
          onclick: () => { cursors.push(page.next_cursor); load(); } }));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message, e.details);
    }
  }
  load();
  return () => { stopped = true; };
}

const DEFAULT_PAYLOAD = { params: {}, pipeline: [{ id: 'hello', uses: 'noop', with: { message: 'hello' } }] };

// Which form field shows an API error for `field` (payload.pipeline[0].uses shows on payload).
function formField(name) {
  if (name.startsWith('payload')) return 'payload';
  return name;
}

export function renderForm(main, args, ctx) {
  const editing = args[0] || null;
  const status = h('div', { hidden: true });
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
  const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const input = (id, attrs = {}) => h('input', { id, name: id, autocomplete: 'off', ...attrs });
  const f = {
    title: input('title', { required: true, maxlength: 200 }),
    name: input('name', { maxlength: 100, spellcheck: 'false', class: 'mono', placeholder: 'nightly-export' }),
    description: h('textarea', { id: 'description', name: 'description', rows: 2, maxlength: 2000 }),
    schedule_kind: select('schedule_kind', 'Schedule kind', KINDS.map((k) => [k, k]), 'cron'),
    schedule_expr: input('schedule_expr', { required: true, spellcheck: 'false', class: 'mono', placeholder: '*/5 * * * *', 'aria-describedby': 'schedule_expr-hint' }),
    timezone: input('timezone', { list: 'zones', value: viewerZone, spellcheck: 'false' }),
    payload: h('textarea', { id: 'payload', name: 'payload', rows: 8, spellcheck: 'false', class: 'mono' }),
    priority: input('priority', { type: 'number', min: 1, max: 9, value: 5 }),
    max_retries: input('max_retries', { type: 'number', min: 0, max: 10, value: 3 }),
    backoff_strategy: select('backoff_strategy', 'Backoff', [['exponential_jitter', 'exponential with jitter'], ['linear', 'linear'], ['fixed', 'fixed']], 'exponential_jitter'),
    timeout_seconds: input('timeout_seconds', { type: 'number', min: 1, max: 86400, value: 300 }),
    misfire_grace_seconds: input('misfire_grace_seconds', { type: 'number', min: 0, value: 30 }),
    catchup: select('catchup', 'Catch-up', [['skip', 'skip'], ['latest', 'latest'], ['all', 'all']], 'skip'),
    overlap: select('overlap', 'Overlap', [['allow', 'allow'], ['skip', 'skip'], ['queue', 'queue']], 'allow'),
    concurrency_key: input('concurrency_key', { maxlength: 100 }),
    dedupe_key: input('dedupe_key', { maxlength: 100 }),
    dedupe_window_seconds: input('dedupe_window_seconds', { type: 'number', min: 0, value: 0 }),
  };
  f.payload.value = JSON.stringify(DEFAULT_PAYLOAD, null, 2);
  const words = h('p', { class: 'words', id: 'schedule-words', 'aria-live': 'polite' });
  const preview = h('ol', { class: 'preview', id: 'preview', 'aria-live': 'polite', 'aria-label': 'Next fires' });
  const previewNote = h('p', { class: 'hint', id: 'preview-note' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'save-task', text: editing ? 'Save changes' : 'Create task' });
  const form = h('form', { class: 'task-form', novalidate: true, 'aria-label': editing ? 'Edit task' : 'New task' },
    h('div', { class: 'cols' },
      h('div', { class: 'col' },
        field('title', 'Title', f.title),
        field('name', 'Name (optional)', f.name, 'A stable name for tasks kept as code (orrery apply): A-Z a-z 0-9 . _ -, unique per owner'),
        field('description', 'Description', f.description),
        h('div', { class: 'row' },
          field('schedule_kind', 'Schedule kind', f.schedule_kind),
          field('timezone', 'Time zone', f.timezone, 'IANA name, e.g. Europe/Berlin')),
        field('schedule_expr', 'Schedule', f.schedule_expr,
          'cron: 5 fields or a macro (0 9 * * MON-FRI, @daily) · rrule: FREQ=WEEKLY;BYDAY=MO;BYHOUR=9 · once: 2030-01-31T09:00:00 · event: a topic pattern (orders.*)'),
        h('datalist', { id: 'zones' }, zones.map((z) => h('option', { value: z }))),
        field('payload', 'Payload (JSON: params and pipeline)', f.payload),
        h('details', { class: 'advanced' }, h('summary', { text: 'Retries, limits and policies' }),
          h('div', { class: 'row wrap' },
            field('priority', 'Priority (1 = first)', f.priority),
            field('max_retries', 'Max retries', f.max_retries),
            field('backoff_strategy', 'Backoff', f.backoff_strategy),
            field('timeout_seconds', 'Timeout (s)', f.timeout_seconds),
            field('misfire_grace_seconds', 'Misfire grace (s)', f.misfire_grace_seconds),
            field('catchup', 'Catch-up', f.catchup),
            field('overlap', 'Overlap', f.overlap),
            field('concurrency_key', 'Concurrency key', f.concurrency_key),
            field('dedupe_key', 'Dedupe key', f.dedupe_key),
            field('dedupe_window_seconds', 'Dedupe window (s)', f.dedupe_window_seconds))),
        status,
        h('div', { class: 'actions' },
          h('a', { class: 'button secondary', href: editing ? `#/tasks/${editing}` : '#/tasks', text: 'Cancel' }), submit)),
      h('aside', { class: 'col preview-col card', 'aria-label': 'Schedule preview' },
        h('h2', { text: 'Next fires' }), words, previewNote, preview)));
  main.append(h('div', { class: 'page-head' }, h('h1', { text: editing ? 'Edit task' : 'New task' })), form);

  let original = null;
  let stopped = false;
  let seq = 0;

  // Live checks that need no server: required fields and JSON syntax.
  function localErrors() {
    const errors = {};
    if (!f.title.value.trim()) errors.title = 'is required';
    if (!f.schedule_expr.value.trim()) errors.schedule_expr = 'is required';
    try {
      const p = JSON.parse(f.payload.value);
      if (!p || typeof p !== 'object' || Array.isArray(p)) errors.payload = 'must be a JSON object';
    } catch (e) {
      errors.payload = `is not valid JSON: ${e.message}`;
    }
    return errors;
  }

  const touched = new Set();
  function showLocal() {
    const errors = localErrors();
    for (const name of ['title', 'payload']) if (touched.has(name)) showFieldError(form, name, errors[name]);
  }

  const refreshPreview = debounce(async () => {
    const my = ++seq;
    const kind = f.schedule_kind.value;
    const expr = f.schedule_expr.value.trim();
    const tz = f.timezone.value.trim() || 'UTC';
    words.textContent = expr ? describe(kind, expr) : '';
    if (!expr) {
      clear(preview);
      previewNote.textContent = 'Type a schedule to see its next fires.';
      return;
    }
    try {
      const res = await post('/schedules/preview', { schedule_kind: kind, schedule_expr: expr, timezone: tz, count: 10 });
      if (stopped || my !== seq) return;
      showFieldError(form, 'schedule_expr', null);
      showFieldError(form, 'timezone', null);
      previewNote.textContent = kind === 'event'
        ? 'Event tasks have no clock fires: they run when a matching event is published.'
        : res.fires.length ? `In ${tz} (your time on hover), computed by the scheduler's engine.` : 'No fires in the next 12 years.';
      clear(preview).append(...res.fires.map((fire) => h('li', { 'data-at': fire.at },
        h('time', { datetime: fire.at, title: `${fire.at} (UTC)`, text: fire.local.replace('T', ' ') }),
        h('span', { class: 'muted', text: ` · ${fire.at.replace('T', ' ').replace('Z', ' UTC')}` }))));
    } catch (e) {
      if (stopped || my !== seq) return;
      clear(preview);
      previewNote.textContent = '';
      if (e.status === 422 && Array.isArray(e.details)) {
        for (const d of e.details) showFieldError(form, formField(d.field), d.message);
      } else {
        previewNote.textContent = e.message;
      }
    }
  }, 250);

  for (const [name, el] of Object.entries(f)) {
    el.addEventListener('input', () => {
      touched.add(name);
      if (['schedule_kind', 'schedule_expr', 'timezone'].includes(name)) refreshPreview();
      showLocal();
    });
    el.addEventListener('change', () => { touched.add(name); if (name === 'schedule_kind') refreshPreview(); showLocal(); });
  }

  function body() {
    const num = (el) => (el.value === '' ? undefined : Number(el.value));
    const text = (el) => (el.value.trim() === '' ? null : el.value.trim());
    return {
      title: f.title.value.trim(),
      name: text(f.name),
      description: f.description.value,
      schedule_kind: f.schedule_kind.value,
      schedule_expr: f.schedule_expr.value.trim(),
      timezone: f.timezone.value.trim() || undefined,
      payload: JSON.parse(f.payload.value),
      priority: num(f.priority),
      max_retries: num(f.max_retries),
      backoff_strategy: f.backoff_strategy.value,
      timeout_seconds: num(f.timeout_seconds),
      misfire_grace_seconds: num(f.misfire_grace_seconds),
      catchup: f.catchup.value,
      overlap: f.overlap.value,
      concurrency_key: text(f.concurrency_key),
      dedupe_key: text(f.dedupe_key),
      dedupe_window_seconds: num(f.dedupe_window_seconds),
    };
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll('.field-error')) { el.hidden = true; el.textContent = ''; }
    const errors = localErrors();
    // Payload syntax must be fixed here (it cannot be sent); everything else is checked by the API itself.
    if (errors.payload) {
      showFieldError(form, 'payload', errors.payload);
      notice(status, 'error', 'Fix the payload before saving.');
      f.payload.focus();
      return;
    }
    let b = body();
    if (editing && original) {
      // PATCH only what changed.
      const changed = {};
      for (const [k, v] of Object.entries(b)) {
        const before = original[k] === undefined ? null : original[k];
        if (JSON.stringify(v ?? null) !== JSON.stringify(before)) changed[k] = v;
      }
      b = changed;
    }
    for (const k of Object.keys(b)) if (b[k] === undefined || (!editing && b[k] === null)) delete b[k];
    submit.disabled = true;
    try {
      const task = editing ? await patch(`/tasks/${editing}`, b) : await post('/tasks', b);
      ctx.navigate(`#/tasks/${task.id}`);
    } catch (err) {
      submit.disabled = false;
      const details = Array.isArray(err.details) ? err.details : [];
      let first = null;
      for (const d of details) {
        if (showFieldError(form, formField(d.field), `${d.field === formField(d.field) ? '' : `${d.field}: `}${d.message}`) && !first) first = formField(d.field);
      }
      notice(status, 'error', err.message === 'validation failed' ? 'The task was not saved: fix the fields marked below.' : err.message,
        details.filter((d) => !form.querySelector(`#err-${CSS.escape(formField(d.field))}`)));
      if (first) form.querySelector(`#${CSS.escape(first)}`)?.focus();
    }
  });

  if (editing) {
    get(`/tasks/${editing}`).then((t) => {
      if (stopped) return;
      original = t;
      for (const [k, el] of Object.entries(f)) {
        if (k === 'payload') el.value = JSON.stringify(t.payload, null, 2);
        else if (t[k] !== undefined && t[k] !== null) el.value = t[k];
      }
      refreshPreview();
    }).catch((e) => notice(status, 'error', e.message));
  } else {
    f.title.focus();
    refreshPreview();
  }
  return () => { stopped = true; };
}

