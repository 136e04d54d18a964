// Task detail: the schedule in words, its next fires on a timeline (task zone and UTC) with DST transitions,
// the actions (through the REST endpoints, with confirmation), recent runs (live) and a chart of them.
import { h, clear, time, table, notice, badge, outcome, duration, runSeconds, svg, pretty, confirmDialog, link, offsetText } from './dom.js';
import { get, post, del, qs } from './api.js';
import { describe } from './describe.js';

function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
}

function wallText(local) {
  // 2026-03-08T03:00:00-04:00 → 2026-03-08 03:00:00
  return local.slice(0, 19).replace('T', ' ');
}

// The fires and transitions on one horizontal axis.
function timelineSvg(tl) {
  const W = 760, H = 100, L = 10, R = 10;
  const t0 = new Date(tl.window_start).getTime();
  const t1 = Math.max(new Date(tl.window_end).getTime(), t0 + 1);
  const x = (iso) => L + ((new Date(iso).getTime() - t0) / (t1 - t0)) * (W - L - R);
  const marks = [];
  tl.transitions.forEach((tr, n) => {
    const xx = x(tr.at);
    marks.push(svg('g', { class: `transition ${tr.kind}` },
      svg('title', { text: `${tr.kind === 'gap' ? 'Clocks jump forward' : 'Clocks go back'} at ${tr.at}: ${offsetText(tr.offset_before_seconds)} → ${offsetText(tr.offset_after_seconds)}` }),
      svg('line', { x1: xx, y1: 8, x2: xx, y2: H - 22 }),
      svg('text', { x: xx > W * 0.75 ? xx - 3 : xx + 3, y: n % 2 ? 80 : 16, class: xx > W * 0.75 ? 'tick end' : 'tick', text: `${offsetText(tr.offset_before_seconds)}→${offsetText(tr.offset_after_seconds).slice(3)}` })));
  });
  tl.fires.forEach((f, i) => {
    marks.push(svg('g', { class: f.dst ? 'fire moved' : 'fire' },
      svg('title', { text: `#${i + 1} ${wallText(f.local)} ${tl.timezone} · ${f.at}${f.dst ? ` · ${f.dst.note}` : ''}` }),
      svg('circle', { cx: x(f.at), cy: 44, r: f.dst ? 6 : tl.fires.length > 60 ? 1.5 : 4 })));
  });
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart timeline', role: 'img',
    'aria-label': `${tl.fires.length} next fires between ${tl.window_start} and ${tl.window_end}; ${tl.transitions.length} DST transitions` },
    svg('line', { x1: L, y1: 44, x2: W - R, y2: 44, class: 'axis' }),
    svg('text', { x: L, y: H - 6, class: 'tick', text: 'now' }),
    svg('text', { x: W - R, y: H - 6, class: 'tick end', text: new Date(tl.window_end).toISOString().slice(0, 16).replace('T', ' ') + ' UTC' }),
    marks);
}

// Duration of each run (bar height) coloured by outcome, oldest on the left.
function runsChart(runs) {
  const data = runs.slice().reverse();
  const W = 760, H = 140, pad = 24;
  if (!data.length) return h('p', { class: 'muted', text: 'No runs yet.' });
  const secs = data.map((r) => runSeconds(r) ?? 0);
  const max = Math.max(0.001, ...secs);
  const bw = Math.max(2, (W - pad) / Math.max(data.length, 20));
  const bars = data.map((r, i) => {
    const hgt = Math.max(2, ((H - pad - 8) * secs[i]) / max);
    return svg('g', {}, svg('title', { text: `run ${r.id}: ${r.success ? 'success' : 'failure'}, ${duration(runSeconds(r))}, ${r.finished_at}` }),
      svg('rect', { x: pad + i * bw + 1, y: H - pad - hgt, width: bw - 2, height: hgt, class: r.success ? 'bar-ok' : 'bar-bad' }));
  });
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `Duration and outcome of the last ${data.length} runs; longest ${duration(max)}` },
    svg('line', { x1: pad, y1: H - pad, x2: W, y2: H - pad, class: 'axis' }),
    svg('text', { x: 0, y: 12, class: 'tick', text: duration(max) }),
    svg('text', { x: pad, y: H - 8, class: 'tick', text: 'older' }),
    svg('text', { x: W, y: H - 8, class: 'tick end', text: 'newest' }),
    bars);
}

export function render(main, [id], ctx) {
  const status = h('div', { hidden: true });
  const head = h('div', { class: 'page-head' });
  const info = h('section', { class: 'card wide info' });
  const tlBox = h('section', { class: 'card wide', id: 'timeline' });
  const runsBox = h('section', { class: 'card wide', id: 'runs' });
  main.append(head, status, h('div', { class: 'grid' }, info, tlBox, runsBox));
  const canWrite = ctx.me.admin || ctx.me.scopes.includes('tasks:write');
  const canRuns = ctx.me.admin || ctx.me.scopes.includes('runs:read');
  let task = null;
  let stopped = false;
  let count = 30;
  const runCursors = [null];

  async function action(label, path, body, message) {
    try {
      const res = await post(path, body);
      notice(status, 'ok', message(res));
      await loadTask();
      return res;
    } catch (e) {
      notice(status, 'error', `${label} failed: ${e.message}`, e.details);
      return null;
    }
  }

  function actions(t) {
    if (!canWrite) return [];
    const terminal = t.status === 'canceled' || t.status === 'completed';
    const btn = (text, idAttr, onclick, cls = 'secondary') => h('button', { type: 'button', class: cls, id: idAttr, onclick, text });
    const out = [];
    if (!terminal) out.push(h('a', { class: 'button secondary', href: `#/tasks/${t.id}/edit`, id: 'edit-task', text: 'Edit' }));
    if (t.status === 'active') {
      out.push(btn('Pause', 'pause-task', async () => {
        if (await confirmDialog({ title: 'Pause this task?', body: 'No new fires are materialized until it is resumed; pending work waits.', confirm: 'Pause' })) {
          action('Pause', `/tasks/${t.id}/pause`, undefined, () => 'Paused.');
        }
      }));
    }
    if (t.status === 'paused') {
      out.push(btn('Resume', 'resume-task', async () => {
        if (await confirmDialog({ title: 'Resume this task?', body: 'Fires missed while paused follow its catch-up policy.', confirm: 'Resume' })) {
          action('Resume', `/tasks/${t.id}/resume`, undefined, () => 'Resumed.');
        }
      }));
    }
    if (!terminal) {
      out.push(btn('Run now', 'run-now', async () => {
        const v = await confirmDialog({
          title: 'Run now', confirm: 'Run now', body: 'Queues one run at once, in addition to the schedule.',
          fields: [{ name: 'params', label: 'Params (JSON object, merged over the task\'s params)', multiline: true, value: '{}',
            validate: (s) => { try { const p = JSON.parse(s || '{}'); return p && typeof p === 'object' && !Array.isArray(p) ? null : 'must be a JSON object'; } catch (e) { return e.message; } } }],
        });
        if (v) {
          const params = JSON.parse(v.params || '{}');
          action('Run now', `/tasks/${t.id}/run_now`, Object.keys(params).length ? { params } : undefined,
            (r) => `Queued as work #${r.due_work_id}; it appears below as soon as a worker takes it.`);
        }
      }, 'primary'));
      out.push(btn('Snooze', 'snooze-task', async () => {
        const v = await confirmDialog({
          title: 'Snooze the next fire', confirm: 'Snooze', body: 'Delays the next fire; later fires are unchanged.',
          fields: [{ name: 'delay', label: 'Delay (seconds)', type: 'number', value: '600', min: 1, max: 604800,
            validate: (s) => (/^\d+$/.test(s) && Number(s) >= 1 && Number(s) <= 604800 ? null : 'must be 1 to 604800') }],
        });
        if (v) action('Snooze', `/tasks/${t.id}/snooze`, { delay_seconds: Number(v.delay) }, (r) => `Snoozed: the fire of ${r.run_at} now runs at ${r.ready_at}.`);
      }));
      out.push(btn('Cancel', 'cancel-task', async () => {
        if (await confirmDialog({ title: 'Cancel this task?', body: 'Canceling is final: pending work is dropped and the task can no longer be edited or resumed.', confirm: 'Cancel task', danger: true })) {
          action('Cancel', `/tasks/${t.id}/cancel`, undefined, () => 'Canceled.');
        }
      }, 'danger'));
    }
    out.push(btn('Delete', 'delete-task', async () => {
      if (await confirmDialog({ title: 'Delete this task?', body: `“${t.title}” and its whole run history are deleted. This cannot be undone.`, confirm: 'Delete', danger: true })) {
        try {
          await del(`/tasks/${t.id}`);
          ctx.navigate('#/tasks');
        } catch (e) {
          notice(status, 'error', `Delete failed: ${e.message}`);
        }
      }
    }, 'danger'));
    return out;
  }

  async function loadTask() {
    try {
      const t = await get(`/tasks/${id}`);
      if (stopped) return;
      task = t;
      clear(head).append(
        h('div', {}, h('p', { class: 'crumbs' }, link('#/tasks', 'Tasks'), ' / '), h('h1', { id: 'task-title', text: t.title }), ' ', badge(t.status)),
        h('div', { class: 'actions', role: 'group', 'aria-label': 'Task actions' }, actions(t)));
      clear(info).append(h('h2', { text: 'Schedule' }),
        h('p', { class: 'words', id: 'schedule-in-words', text: describe(t.schedule_kind, t.schedule_expr) }),
        dl([
          ['Kind', t.schedule_kind], ['Expression', h('code', { text: t.schedule_expr })], ['Time zone', t.timezone],
          ['Next run', time(t.next_run_at, { relative: true })], ['Priority', String(t.priority)],
          ['Retries', `${t.max_retries} (${t.backoff_strategy})`], ['Timeout', `${t.timeout_seconds} s`],
          ['Catch-up / overlap', `${t.catchup} / ${t.overlap}`],
          t.concurrency_key ? ['Concurrency key', t.concurrency_key] : null,
          ['Created', time(t.created_at)], ['Updated', time(t.updated_at)], ['Id', h('code', { text: t.id })],
          t.description ? ['Description', t.description] : null,
        ]),
        h('details', {}, h('summary', { text: 'Payload' }), pretty(t.payload)));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }

  async function loadTimeline() {
    try {
      const tl = await get(`/console/tasks/${id}/timeline${qs({ count })}`);
      if (stopped) return;
      const picker = h('select', { id: 'timeline-count', 'aria-label': 'How many fires' },
        [10, 30, 100, 500].map((n) => h('option', { value: n, selected: n === count ? 'selected' : null, text: `${n} fires` })));
      picker.addEventListener('change', () => { count = Number(picker.value); loadTimeline(); });
      const rows = tl.fires.map((f, i) => h('tr', { class: f.dst ? 'moved' : '' },
        h('td', { text: String(i + 1) }),
        h('td', {}, h('time', { datetime: f.at, title: `${f.at} (UTC)`, text: wallText(f.local) }), h('span', { class: 'muted', text: ` ${offsetText(f.offset_seconds)}` })),
        h('td', { class: 'mono', text: f.at.replace('T', ' ').replace('Z', '') }),
        h('td', {}, time(f.at)),
        h('td', {}, f.dst ? h('span', { class: `badge ${f.dst.kind === 'gap' ? 'warn' : 'info'}`, text: f.dst.kind === 'gap' ? 'moved by gap' : 'in fold' }) : null,
          f.dst ? ` ${f.dst.note}` : '')));
      const trs = tl.transitions.map((tr) => h('li', { class: `transition-item ${tr.kind}` },
        h('strong', { text: tr.kind === 'gap' ? 'Clocks jump forward' : 'Clocks go back' }),
        ` at ${tr.local_before.slice(0, 16)} → ${tr.local_after.slice(11, 16)} local (`,
        h('time', { datetime: tr.at, title: `${tr.at} (UTC)`, text: tr.at.replace('T', ' ').replace(':00Z', ' UTC') }),
        `), ${offsetText(tr.offset_before_seconds)} → ${offsetText(tr.offset_after_seconds)}.`,
        tr.skipped_local.length ? ` Skipped: ${tr.skipped_local.map((s) => s.slice(11, 16)).join(', ')} (those times do not exist that day).` : '',
        (() => {
          const near = tl.fires.map((f, i) => [f, i]).filter(([f]) => f.dst && Math.abs(new Date(f.at) - new Date(tr.at)) < 2 * 86400000);
          return near.length ? h('ul', {}, near.map(([f, i]) => h('li', { class: 'moved-fire', text: `Fire #${i + 1} (${f.at.replace('T', ' ').replace(':00Z', ' UTC')}): ${f.dst.note}` }))) : '';
        })()));
      clear(tlBox).append(
        h('div', { class: 'section-head' }, h('h2', { text: 'Next fires' }), h('label', { class: 'inline', for: 'timeline-count', text: 'Show' }), picker),
        tl.fires.length ? timelineSvg(tl) : h('p', { class: 'muted', text: task && task.schedule_kind === 'event' ? 'Event tasks fire when a matching event is published.' : 'No upcoming fires.' }),
        tl.transitions.length ? h('div', { class: 'dst' }, h('h3', { text: `DST transitions in ${tl.timezone} in this window` }), h('ul', { id: 'transitions' }, trs))
          : h('p', { class: 'hint', text: `No DST transition in ${tl.timezone} before the last fire shown.` }),
        table(['#', `Local (${tl.timezone})`, 'UTC', 'Your time', 'DST'], rows, { caption: 'Next fires', empty: 'No upcoming fires.' }));
    } catch (e) {
      if (!stopped) clear(tlBox).append(h('h2', { text: 'Next fires' }), h('p', { class: 'notice error', text: e.message }));
    }
  }

  async function loadRuns() {
    if (!canRuns) { clear(runsBox).append(h('h2', { text: 'Runs' }), h('p', { class: 'muted', text: 'This token lacks runs:read.' })); return; }
    try {
      const before = runCursors[runCursors.length - 1];
      const [page, stats] = await Promise.all([
        get(`/console/tasks/${id}/runs${qs({ before, limit: 50 })}`),
        get(`/tasks/${id}/runs/stats?days=7`),
      ]);
      if (stopped) return;
      const rows = page.items.map((r) => h('tr', { 'data-run-id': r.id, class: r.success ? 'run-ok' : 'run-bad' },
        h('td', {}, link(`#/runs/${r.id}`, `#${r.id}`)),
        h('td', {}, outcome(r)),
        h('td', { text: String(r.attempt) }),
        h('td', { text: r.trigger }),
        h('td', {}, time(r.scheduled_for)),
        h('td', {}, time(r.finished_at)),
        h('td', { text: duration(runSeconds(r)) }),
        h('td', { text: r.error_kind || '' }),
        h('td', { class: 'mono', text: r.worker_id || '' })));
      clear(runsBox).append(
        h('div', { class: 'section-head' }, h('h2', { text: 'Recent runs' }),
          h('span', { class: 'muted', id: 'run-stats', text: `7 days: ${stats.total} runs, ${stats.succeeded} ok, ${stats.failed} failed${stats.p95_duration_seconds !== null ? `, p95 ${duration(stats.p95_duration_seconds)}` : ''}` })),
        runsChart(page.items),
        table(['Run', 'Outcome', 'Attempt', 'Trigger', 'Scheduled for', 'Finished', 'Duration', 'Error kind', 'Worker'], rows,
          { caption: 'Recent runs', empty: 'No runs yet.' }),
        h('nav', { class: 'pager', 'aria-label': 'Run pages' },
          h('button', { type: 'button', class: 'secondary', disabled: runCursors.length <= 1, text: '← Newer', onclick: () => { runCursors.pop(); loadRuns(); } }),
          h('button', { type: 'button', class: 'secondary', disabled: !page.next_cursor, text: 'Older →', onclick: () => { runCursors.push(page.next_cursor); loadRuns(); } })));
    } catch (e) {
      if (!stopped) clear(runsBox).append(h('h2', { text: 'Recent runs' }), h('p', { class: 'notice error', text: e.message }));
    }
  }

  let pending = null;
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; loadRuns(); loadTask(); }, 200); };
  const unsub = ctx.live.subscribe((e) => { if (e.task_id === id && runCursors.length === 1) soon(); });
  let timer = null;
  const unstate = ctx.live.onState((s) => {
    clearInterval(timer);
    timer = setInterval(() => { if (runCursors.length === 1) { loadRuns(); loadTask(); } }, s === 'live' ? 60000 : 5000);
  });
  loadTask().then(() => { loadTimeline(); loadRuns(); });
  return () => { stopped = true; clearInterval(timer); clearTimeout(pending); unsub(); unstate(); };
}
