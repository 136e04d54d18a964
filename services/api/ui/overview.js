// Overview: counts, runs of the last day, workers and the next fires, refreshed by the live run feed (or by
// polling while the feed is down).
import { h, clear, time, relative, svg, table, notice, link } from './dom.js';
import { get } from './api.js';
import { describe } from './describe.js';

function stat(label, value, kind, id) {
  return h('div', { class: `stat ${kind || ''}`, id },
    h('span', { class: 'value', text: value === null || value === undefined ? '—' : String(value) }),
    h('span', { class: 'label', text: label }));
}

function card(title, ...body) {
  return h('section', { class: 'card' }, h('h2', { text: title }), ...body);
}

// Runs per hour over the last day, succeeded stacked under failed.
function runsChart(buckets) {
  const W = 480, H = 120, pad = 22;
  const max = Math.max(1, ...buckets.map((b) => b.succeeded + b.failed));
  const bw = (W - pad) / 24;
  const bars = [];
  for (const b of buckets) {
    const x = W - (b.hours_ago + 1) * bw;
    const hs = ((H - pad) * b.succeeded) / max;
    const hf = ((H - pad) * b.failed) / max;
    const label = `${b.hours_ago === 0 ? 'last hour' : `${b.hours_ago}–${b.hours_ago + 1} h ago`}: ${b.succeeded} succeeded, ${b.failed} failed`;
    bars.push(svg('g', {}, svg('title', { text: label }),
      svg('rect', { x: x + 1, y: H - pad - hs, width: bw - 2, height: hs, class: 'bar-ok' }),
      svg('rect', { x: x + 1, y: H - pad - hs - hf, width: bw - 2, height: hf, class: 'bar-bad' })));
  }
  return svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `Runs per hour over the last day; at most ${max} in an hour` },
    svg('line', { x1: 0, y1: H - pad, x2: W, y2: H - pad, class: 'axis' }),
    svg('text', { x: 0, y: H - 6, class: 'tick', text: '24 h ago' }),
    svg('text', { x: W, y: H - 6, class: 'tick end', text: 'now' }),
    svg('text', { x: 0, y: 10, class: 'tick', text: `max ${max}/h` }),
    bars);
}

export function render(main, _args, ctx) {
  const status = h('div', { hidden: true });
  const body = h('div', { class: 'grid', id: 'overview' });
  const feed = h('ol', { class: 'feed', id: 'live-feed', 'aria-live': 'polite' });
  main.append(
    h('div', { class: 'page-head' }, h('h1', { text: 'Overview' }), h('p', { class: 'muted', id: 'generated', text: '' })),
    status, body,
    h('section', { class: 'card wide' }, h('h2', { text: 'Live run events' }),
      h('p', { class: 'hint', text: 'Started, succeeded, failed and dead runs of the tasks you can see, as they happen.' }), feed));
  let stopped = false;
  let timer = null;

  async function load() {
    try {
      const o = await get('/console/overview');
      if (stopped) return;
      notice(status, 'error', null);
      draw(o);
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }

  function draw(o) {
    main.querySelector('#generated').replaceChildren('Updated ', time(o.generated_at));
    const t = o.tasks;
    const w = o.work;
    const cards = [
      card('Tasks',
        h('div', { class: 'stats' },
          stat('active', t.active, 'ok', 'count-active'), stat('paused', t.paused, 'warn', 'count-paused'),
          stat('canceled', t.canceled, '', 'count-canceled'), stat('completed', t.completed, '', 'count-completed')),
        h('p', {}, link('#/tasks', 'All tasks →'))),
      card('Work',
        h('div', { class: 'stats' },
          stat('due now', w.due, w.due > 0 ? 'warn' : '', 'count-due'), stat('running', w.running, 'ok', 'count-running'),
          stat('scheduled', w.scheduled, '', 'count-scheduled'), stat('dead', w.dead, w.dead > 0 ? 'bad' : '', 'count-dead')),
        ctx.me.admin ? h('p', {}, link('#/dead', 'Dead work →')) : null),
    ];
    if (o.runs) {
      cards.push(card('Runs',
        h('div', { class: 'stats' },
          stat('succeeded (1 h)', o.runs.last_hour.succeeded, 'ok', 'runs-hour-ok'),
          stat('failed (1 h)', o.runs.last_hour.failed, o.runs.last_hour.failed ? 'bad' : '', 'runs-hour-failed'),
          stat('succeeded (24 h)', o.runs.last_day.succeeded, 'ok', 'runs-day-ok'),
          stat('failed (24 h)', o.runs.last_day.failed, o.runs.last_day.failed ? 'bad' : '', 'runs-day-failed')),
        runsChart(o.runs.by_hour),
        h('p', { class: 'legend' }, h('span', { class: 'key ok', text: 'succeeded' }), ' ', h('span', { class: 'key bad', text: 'failed' }))));
    }
    if (o.workers) {
      cards.push(card('Workers',
        h('div', { class: 'stats' },
          stat('alive', o.workers.alive, o.workers.alive ? 'ok' : 'bad', 'workers-alive'),
          stat('known', o.workers.total, '', 'workers-total'),
          stat('scheduler', o.workers.scheduler_alive ? 'up' : 'down', o.workers.scheduler_alive ? 'ok' : 'bad', 'scheduler-state')),
        h('p', {}, link('#/workers', 'Workers →'))));
    }
    const rows = o.next_fires.map((f) => h('tr', {},
      h('td', {}, link(`#/tasks/${f.task_id}`, f.title)),
      h('td', { title: `${f.schedule_kind}: ${f.schedule_expr}`, text: describe(f.schedule_kind, f.schedule_expr) }),
      h('td', { text: f.timezone }),
      h('td', {}, time(f.next_run_at)),
      h('td', { class: 'muted', text: relative(f.next_run_at) })));
    cards.push(h('section', { class: 'card wide' }, h('h2', { text: 'Next fires' }),
      table(['Task', 'Schedule', 'Zone', 'Next run (your time)', 'In'], rows, { caption: 'Next fires across all tasks', empty: 'No upcoming fires.' })));
    clear(body).append(...cards);
  }

  const redraw = (() => {
    let pending = null;
    return () => { if (!pending) pending = setTimeout(() => { pending = null; load(); }, 500); };
  })();

  const unsub = ctx.live.subscribe((e) => {
    const li = h('li', {},
      h('span', { class: `badge ${e.event === 'succeeded' ? 'ok' : e.event === 'started' ? 'info' : 'bad'}`, text: e.event }), ' ',
      link(`#/tasks/${e.task_id}`, `task ${String(e.task_id).slice(0, 8)}`), ` attempt ${e.attempt ?? '?'} · work #${e.due_work_id} · `,
      time(new Date().toISOString()));
    feed.prepend(li);
    while (feed.children.length > 20) feed.lastChild.remove();
    redraw();
  });
  const unstate = ctx.live.onState((s) => {
    clearInterval(timer);
    // Live: a slow safety refresh; polling: every 5 s.
    timer = setInterval(load, s === 'live' ? 30000 : 5000);
  });
  load();
  return () => { stopped = true; clearInterval(timer); unsub(); unstate(); };
}
