// Workers: heartbeat, state, in-flight, counters; stale ones flagged.
import { h, clear, time, table, notice, badge, relative } from './dom.js';
import { get } from './api.js';

export function render(main, _args, _ctx) {
  const status = h('div', { hidden: true });
  const body = h('div', { id: 'worker-list' });
  main.append(h('div', { class: 'page-head' }, h('h1', { text: 'Workers' })),
    h('p', { class: 'hint', text: 'A worker heartbeats every 5 s; one not seen for 15 s is flagged stale. Refreshes every 5 s.' }), status, body);
  let stopped = false;
  async function load() {
    try {
      const res = await get('/workers');
      if (stopped) return;
      notice(status, 'error', null);
      const rows = res.items.map((w) => h('tr', { class: w.alive ? '' : 'stale' },
        h('td', { class: 'mono', text: w.worker_id }),
        h('td', {}, w.alive ? badge(w.state, w.state === 'running' ? 'ok' : 'info') : badge('stale', 'bad')),
        h('td', { text: `${w.hostname} (pid ${w.pid})` }),
        h('td', {}, time(w.last_seen), h('span', { class: 'muted', text: ` ${relative(w.last_seen)}` })),
        h('td', {}, time(w.started_at)),
        h('td', { class: 'num', text: String(w.in_flight) }),
        h('td', { class: 'num', text: String(w.processed) }),
        h('td', { class: 'num', text: String(w.failed) })));
      clear(body).append(table(['Worker', 'State', 'Host', 'Last heartbeat', 'Started', 'In flight', 'Processed', 'Failed'], rows,
        { caption: 'Workers', empty: 'No worker has ever reported.' }));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }
  load();
  const timer = setInterval(load, 5000);
  return () => { stopped = true; clearInterval(timer); };
}
