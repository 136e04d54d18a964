// Events: recent events, topics with their tasks, and publishing a test event.
import { h, clear, time, table, notice, pretty, field, showFieldError, link } from './dom.js';
import { get, post } from './api.js';

export function render(main, _args, ctx) {
  const status = h('div', { hidden: true });
  const recent = h('section', { class: 'card wide', id: 'recent-events' });
  const topics = h('section', { class: 'card', id: 'topics' });
  const topic = h('input', { id: 'topic', name: 'topic', required: true, autocomplete: 'off', spellcheck: 'false', class: 'mono', placeholder: 'orders.created' });
  const payload = h('textarea', { id: 'event_payload', name: 'payload', rows: 5, spellcheck: 'false', class: 'mono', value: '{\n  "test": true\n}' });
  const result = h('div', { id: 'publish-result', 'aria-live': 'polite' });
  const form = h('form', { class: 'card', novalidate: true, 'aria-label': 'Publish a test event' },
    h('h2', { text: 'Publish a test event' }),
    field('topic', 'Topic', topic, 'Dot-separated, e.g. orders.created'),
    field('event_payload', 'Payload (JSON)', payload),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'publish', text: 'Publish' })),
    result);
  main.append(h('div', { class: 'page-head' }, h('h1', { text: 'Events' })), status, h('div', { class: 'grid' }, form, topics, recent));
  let stopped = false;

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showFieldError(form, 'topic', null);
    showFieldError(form, 'event_payload', null);
    let body;
    try {
      body = { topic: topic.value.trim(), payload: JSON.parse(payload.value || '{}') };
    } catch (err) {
      showFieldError(form, 'event_payload', `is not valid JSON: ${err.message}`);
      return;
    }
    try {
      const res = await post('/events', body);
      clear(result).append(h('p', { class: 'notice ok', role: 'status' },
        `Published ${res.event_id} to ${res.topic}; `,
        res.matching_tasks.length ? `it triggers ${res.matching_tasks.length} task(s): ` : 'no active task matches it.',
        res.matching_tasks.map((t, i) => [i ? ', ' : '', link(`#/tasks/${t.id}`, t.title)])));
      load();
    } catch (err) {
      clear(result);
      const details = Array.isArray(err.details) ? err.details : [];
      for (const d of details) showFieldError(form, d.field === 'payload' ? 'event_payload' : d.field, d.message);
      if (!details.length) notice(status, 'error', err.message);
    }
  });

  async function load() {
    if (!ctx.me.admin) {
      clear(recent).append(h('h2', { text: 'Recent events' }), h('p', { class: 'muted', text: 'Only admins can list events.' }));
      topics.hidden = true;
      return;
    }
    try {
      const [ev, tp] = await Promise.all([get('/events/recent?count=50'), get('/events/topics')]);
      if (stopped) return;
      notice(status, 'error', null);
      clear(recent).append(h('h2', { text: 'Recent events' }), table(['Published', 'Topic', 'Event id', 'By', 'Payload'],
        ev.items.map((e) => h('tr', {},
          h('td', {}, time(e.published_at)),
          h('td', { class: 'mono', text: e.topic || '' }),
          h('td', { class: 'mono', text: e.event_id || e.stream_id }),
          h('td', { class: 'mono', text: (e.published_by || '').slice(0, 8) }),
          h('td', {}, h('details', {}, h('summary', { text: 'payload' }), pretty(e.payload))))),
        { caption: 'Recent events', empty: 'No events yet.' }));
      clear(topics).append(h('h2', { text: 'Topics' }),
        tp.items.length ? h('ul', { class: 'topics' }, tp.items.map((g) => h('li', {}, h('code', { text: g.topic }), ' → ',
          g.tasks.map((t, i) => [i ? ', ' : '', link(`#/tasks/${t.id}`, t.title)]))))
          : h('p', { class: 'muted', text: 'No active event task.' }));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }
  load();
  return () => { stopped = true; };
}
