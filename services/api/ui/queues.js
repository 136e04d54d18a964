// Queues: depth, lag, throughput and flow control of every named queue, with pause and resume.
import { h, clear, table, notice, badge, duration, confirmDialog } from './dom.js';
import { get, patch } from './api.js';

function limitText(l) {
  if (!l) return '—';
  const per = l.period_seconds === 1 ? 's' : `${l.period_seconds} s`;
  return `${l.limit} / ${per}`;
}

export function render(main, _args, _ctx) {
  const status = h('div', { hidden: true });
  const body = h('div', { id: 'queue-list' });
  main.append(h('div', { class: 'page-head' }, h('h1', { text: 'Queues' })),
    h('p', { class: 'hint', text: 'Ready is the depth (due, not leased); lag is the age of the oldest ready run. A paused queue starts nothing and loses nothing. Limits are set with PUT /queues/{name} (docs/flow-control.md). Refreshes every 5 s.' }),
    status, body);
  let stopped = false;
  async function setPaused(q, paused) {
    if (paused && !(await confirmDialog({
      title: `Pause queue ${q.name}?`,
      body: `Workers stop starting its runs (${q.ready} ready now); runs already going finish. Nothing is dropped: resume starts them again.`,
      confirm: 'Pause', danger: true,
    }))) return;
    try {
      await patch(`/queues/${encodeURIComponent(q.name)}`, { paused });
      notice(status, 'ok', paused ? `Queue ${q.name} is paused: its work waits.` : `Queue ${q.name} is running again.`);
      load();
    } catch (e) {
      notice(status, 'error', e.message);
    }
  }
  async function load() {
    try {
      const res = await get('/queues');
      if (stopped) return;
      const rows = res.items.map((q) => h('tr', { 'data-queue': q.name },
        h('td', { class: 'mono', text: q.name }),
        h('td', {}, q.paused ? badge('paused', 'bad') : badge('running', 'ok')),
        h('td', { class: 'num', text: String(q.ready) }),
        h('td', { class: 'num', text: String(q.running) }),
        h('td', { class: 'num', text: String(q.scheduled) }),
        h('td', { class: 'num', text: String(q.dead) }),
        h('td', { class: 'num', text: q.lag_seconds == null ? '—' : duration(q.lag_seconds) }),
        h('td', { class: 'num', text: String(q.finished_last_minute) }),
        h('td', { text: q.max_concurrency == null ? '—' : String(q.max_concurrency) }),
        h('td', { text: limitText(q.rate_limit) }),
        h('td', { text: limitText(q.key_rate_limit) }),
        h('td', {}, h('button', {
          type: 'button', class: q.paused ? 'primary small' : 'secondary small', 'data-action': q.paused ? 'resume' : 'pause',
          text: q.paused ? 'Resume' : 'Pause', onclick: () => setPaused(q, !q.paused),
        }))));
      clear(body).append(table(['Queue', 'State', 'Ready', 'Running', 'Scheduled', 'Dead', 'Lag', 'Finished / min',
        'Max concurrency', 'Rate limit', 'Per-key limit', ''], rows, { caption: 'Queues', empty: 'No queue yet: every task runs in "default" until one names another.' }));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }
  load();
  const timer = setInterval(load, 5000);
  return () => { stopped = true; clearInterval(timer); };
}
