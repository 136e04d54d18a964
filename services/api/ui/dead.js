// Dead work: list (keyset pages), inspect, replay one, replay or delete a selection.
import { h, clear, time, table, notice, pretty, confirmDialog, link } from './dom.js';
import { get, post, del, qs } from './api.js';

export function render(main, _args, _ctx) {
  const status = h('div', { hidden: true, id: 'dead-status' });
  const body = h('div', { id: 'dead-list' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  const selectedCount = h('span', { class: 'muted', id: 'selected-count', text: '0 selected' });
  const replaySel = h('button', { type: 'button', class: 'secondary', id: 'replay-selected', disabled: true, text: 'Replay selected' });
  const deleteSel = h('button', { type: 'button', class: 'danger', id: 'delete-selected', disabled: true, text: 'Delete selected' });
  main.append(h('div', { class: 'page-head' }, h('h1', { text: 'Dead work' }),
    h('div', { class: 'actions', role: 'group', 'aria-label': 'Selection' }, selectedCount, replaySel, deleteSel)),
  h('p', { class: 'hint', text: 'Fires that failed every attempt. Replaying puts one back in the queue (attempt 0, due now); its task must be active.' }),
  status, body, pager);
  const cursors = [null];
  const selected = new Set();
  let stopped = false;

  function updateSelection() {
    selectedCount.textContent = `${selected.size} selected`;
    replaySel.disabled = deleteSel.disabled = selected.size === 0;
  }

  async function each(ids, verb, fn) {
    const failures = [];
    for (const id of ids) {
      try { await fn(id); selected.delete(id); } catch (e) { failures.push(`#${id}: ${e.message}`); }
    }
    if (failures.length) notice(status, 'error', `${verb}: ${ids.length - failures.length} of ${ids.length} done.`, failures.map((m) => ({ field: 'work', message: m })));
    else notice(status, 'ok', `${verb}: ${ids.length} done.`);
    updateSelection();
    load();
  }

  const replay = (id) => post(`/queue/dead/${id}/replay`);
  replaySel.addEventListener('click', async () => {
    const ids = [...selected];
    if (await confirmDialog({ title: `Replay ${ids.length} item(s)?`, body: 'Each is queued again, due now.', confirm: 'Replay' })) each(ids, 'Replayed', replay);
  });
  deleteSel.addEventListener('click', async () => {
    const ids = [...selected];
    if (await confirmDialog({ title: `Delete ${ids.length} item(s)?`, body: 'Deleted dead work is gone for good (its runs stay in the history).', confirm: 'Delete', danger: true })) {
      each(ids, 'Deleted', (id) => del(`/queue/dead/${id}`));
    }
  });

  async function load() {
    try {
      const page = await get(`/console/dead${qs({ after: cursors[cursors.length - 1], limit: 50 })}`);
      if (stopped) return;
      const all = h('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select every item on this page' });
      const rows = page.items.flatMap((w) => {
        const box = h('input', { type: 'checkbox', 'aria-label': `Select work #${w.id}`, checked: selected.has(w.id), 'data-id': w.id });
        box.addEventListener('change', () => { if (box.checked) selected.add(w.id); else selected.delete(w.id); updateSelection(); });
        const detail = h('tr', { class: 'detail', hidden: true, id: `detail-${w.id}` }, h('td', { colspan: 8 },
          h('h3', { text: 'Last error' }), h('pre', { class: 'error-text', tabindex: '0', text: w.last_error || '—' }),
          h('h3', { text: 'Params' }), pretty(w.params ?? {}),
          w.event_id ? h('p', {}, 'Event ', h('code', { text: w.event_id })) : null));
        const inspect = h('button', { type: 'button', class: 'secondary small', 'aria-expanded': 'false', 'aria-controls': `detail-${w.id}`, text: 'Inspect' });
        inspect.addEventListener('click', () => {
          detail.hidden = !detail.hidden;
          inspect.setAttribute('aria-expanded', String(!detail.hidden));
        });
        const replayOne = h('button', { type: 'button', class: 'primary small', 'data-replay': w.id, text: 'Replay' });
        replayOne.addEventListener('click', async () => {
          if (!(await confirmDialog({ title: `Replay work #${w.id}?`, body: `“${w.task_title || w.task_id}” runs again now (attempt 0).`, confirm: 'Replay' }))) return;
          try {
            await replay(w.id);
            notice(status, 'ok', `Replayed work #${w.id}: it is queued and runs as soon as a worker is free.`);
            selected.delete(w.id);
            updateSelection();
            load();
          } catch (e) {
            notice(status, 'error', `Replay of #${w.id} failed: ${e.message}`);
          }
        });
        return [h('tr', { 'data-dead-id': w.id },
          h('td', {}, box),
          h('td', {}, link(`#/tasks/${w.task_id}`, w.task_title || w.task_id)),
          h('td', {}, time(w.run_at)),
          h('td', {}, time(w.dead_at)),
          h('td', { text: String(w.attempt) }),
          h('td', { text: w.last_error_kind || '' }),
          h('td', { class: 'clip', title: w.last_error || '', text: (w.last_error || '').slice(0, 80) }),
          h('td', { class: 'nowrap' }, inspect, ' ', replayOne)), detail];
      });
      all.addEventListener('change', () => {
        for (const w of page.items) { if (all.checked) selected.add(w.id); else selected.delete(w.id); }
        for (const b of body.querySelectorAll('input[data-id]')) b.checked = all.checked;
        updateSelection();
      });
      const t = table(['', 'Task', 'Fire', 'Dead since', 'Attempts', 'Error kind', 'Last error', 'Actions'], rows, { caption: 'Dead work', empty: 'No dead work. Everything that failed has been dealt with.' });
      const th = t.querySelector('th');
      th.append(all);
      clear(body).append(t);
      clear(pager).append(
        h('button', { type: 'button', class: 'secondary', disabled: cursors.length <= 1, text: '← Newer', onclick: () => { cursors.pop(); load(); } }),
        h('button', { type: 'button', class: 'secondary', disabled: !page.next_cursor, text: 'Older →', onclick: () => { cursors.push(page.next_cursor); load(); } }));
    } catch (e) {
      if (!stopped) notice(status, 'error', e.message);
    }
  }
  load();
  return () => { stopped = true; };
}
