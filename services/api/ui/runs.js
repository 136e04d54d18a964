// Run detail: every attempt of the fire, with step outputs, error, timings, worker and idempotency key.
import { h, clear, time, notice, outcome, duration, runSeconds, pretty, link } from './dom.js';
import { get } from './api.js';

export function render(main, [id], _ctx) {
  const status = h('div', { hidden: true });
  const body = h('div', { id: 'attempts' });
  main.append(h('div', { class: 'page-head' }, h('h1', { text: `Run #${id}` })), status, body);
  let stopped = false;
  get(`/console/runs/${id}/attempts`).then((a) => {
    if (stopped) return;
    const heading = main.querySelector('h1');
    heading.replaceChildren(`Run #${id}`);
    main.querySelector('.page-head').prepend(h('p', { class: 'crumbs' }, link('#/tasks', 'Tasks'), ' / ', link(`#/tasks/${a.task_id}`, a.task_title), ' /'));
    const cards = a.items.map((r) => h('section', { class: `card attempt ${String(r.id) === id ? 'current' : ''}`, id: `attempt-${r.id}` },
      h('h2', {}, `Attempt ${r.attempt} `, outcome(r), String(r.id) === id ? h('span', { class: 'muted', text: ' (this run)' }) : link(`#/runs/${r.id}`, ` run #${r.id}`)),
      h('dl', { class: 'facts' },
        h('dt', { text: 'Trigger' }), h('dd', { text: r.trigger }),
        h('dt', { text: 'Scheduled for' }), h('dd', {}, time(r.scheduled_for)),
        h('dt', { text: 'Started' }), h('dd', {}, time(r.started_at)),
        h('dt', { text: 'Finished' }), h('dd', {}, time(r.finished_at)),
        h('dt', { text: 'Duration' }), h('dd', { text: duration(runSeconds(r)) }),
        h('dt', { text: 'Worker' }), h('dd', { class: 'mono', text: r.worker_id || '—' }),
        h('dt', { text: 'Idempotency key' }), h('dd', { class: 'mono', title: 'Sent as Idempotency-Key on every HTTP step; the same for every attempt of this fire', text: r.due_work_id ?? '—' }),
        r.error_kind ? [h('dt', { text: 'Error kind' }), h('dd', { text: r.error_kind })] : null),
      r.error ? h('div', {}, h('h3', { text: 'Error' }), h('pre', { class: 'error-text', tabindex: '0', text: r.error })) : null,
      h('h3', { text: 'Step outputs' }),
      r.output ? pretty(r.output) : h('p', { class: 'muted', text: 'No output recorded.' })));
    clear(body).append(...(cards.length ? cards : [h('p', { class: 'muted', text: 'No attempts.' })]));
  }).catch((e) => notice(status, 'error', e.message));
  return () => { stopped = true; };
}
