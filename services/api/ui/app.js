// The console shell: sign-in, navigation, the live-feed indicator and the hash router.
import { h, clear, notice } from './dom.js';
import { get, session, live, setUnauthorizedHandler } from './api.js';
import * as overview from './overview.js';
import * as tasks from './tasks.js';
import * as taskDetail from './task_detail.js';
import * as runs from './runs.js';
import * as dead from './dead.js';
import * as workers from './workers.js';
import * as queues from './queues.js';
import * as events from './events.js';

const app = document.getElementById('app');
let me = null;
let cleanup = null;
let signInMessage = null;

const ROUTES = [
  [/^\/$/, overview.render, 'overview', 'Overview'],
  [/^\/tasks$/, tasks.renderList, 'tasks', 'Tasks'],
  [/^\/tasks\/new$/, tasks.renderForm, 'tasks', 'New task'],
  [/^\/tasks\/([0-9a-f-]{36})\/edit$/, tasks.renderForm, 'tasks', 'Edit task'],
  [/^\/tasks\/([0-9a-f-]{36})$/, taskDetail.render, 'tasks', 'Task'],
  [/^\/runs\/(\d+)$/, runs.render, 'tasks', 'Run'],
  [/^\/dead$/, dead.render, 'dead', 'Dead work', 'admin'],
  [/^\/queues$/, queues.render, 'queues', 'Queues', 'admin'],
  [/^\/workers$/, workers.render, 'workers', 'Workers', 'admin'],
  [/^\/events$/, events.render, 'events', 'Events', 'events'],
];

const NAV = [
  ['#/', 'overview', 'Overview'],
  ['#/tasks', 'tasks', 'Tasks'],
  ['#/dead', 'dead', 'Dead work', 'admin'],
  ['#/queues', 'queues', 'Queues', 'admin'],
  ['#/workers', 'workers', 'Workers', 'admin'],
  ['#/events', 'events', 'Events', 'events'],
];

function allowed(need) {
  if (!need) return true;
  if (me.admin) return true;
  if (need === 'events') return me.scopes.includes('events:publish');
  return false;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  return { path: path || '/', params: new URLSearchParams(query || '') };
}

function signIn() {
  live.stop();
  me = null;
  document.title = 'Sign in · Orrery';
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    'aria-describedby': 'token-hint',
  });
  const status = h('div', { id: 'signin-error', hidden: true });
  const form = h('form', { class: 'signin card', novalidate: true },
    h('h1', {}, h('img', { src: '/ui/favicon.svg', alt: '', width: 28, height: 28 }), ' Orrery console'),
    h('div', { class: 'field' },
      h('label', { for: 'token', text: 'Agent token' }),
      input,
      h('p', { class: 'hint', id: 'token-hint', text: 'Paste an agent\'s bearer token. It is kept in this browser tab only and forgotten when the tab closes or you sign out.' })),
    status,
    h('button', { type: 'submit', class: 'primary', id: 'signin-submit', text: 'Sign in' }));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) { notice(status, 'error', 'Enter a token.'); input.focus(); return; }
    form.querySelector('button').disabled = true;
    try {
      const who = await get('/console/me', { token });
      session.set(token);
      me = who;
      input.value = '';
      start();
    } catch (err) {
      notice(status, 'error', err.status === 401 ? `Sign-in refused: ${err.message}` : err.message);
      form.querySelector('button').disabled = false;
      input.select();
    }
  });
  clear(app).append(h('main', { id: 'main', class: 'signin-page' }, form));
  if (signInMessage) { notice(status, 'error', signInMessage); signInMessage = null; }
  input.focus();
}

function signOut(message) {
  session.clear();
  if (cleanup) { cleanup(); cleanup = null; }
  signInMessage = message || null;
  if (location.hash && location.hash !== '#/') history.replaceState(null, '', '#/');
  signIn();
}

setUnauthorizedHandler((err) => signOut(`Signed out: ${err.message}`));

function shell() {
  const liveDot = h('span', { id: 'live-state', class: 'live off', role: 'status', title: 'Live run feed', text: 'offline' });
  live.onState((s) => {
    liveDot.className = `live ${s}`;
    liveDot.textContent = s === 'live' ? 'live' : s === 'polling' ? 'polling' : 'offline';
    liveDot.title = s === 'live' ? 'Run events arrive as they happen (Server-Sent Events)'
      : s === 'polling' ? 'The live feed is unavailable (Redis down?): pages refresh every few seconds' : 'Live feed off';
  });
  const nav = h('nav', { 'aria-label': 'Console' },
    h('ul', {}, NAV.filter((n) => allowed(n[3])).map(([href, key, label]) =>
      h('li', {}, h('a', { href, 'data-nav': key, text: label })))));
  const header = h('header', { class: 'top' },
    h('a', { class: 'brand', href: '#/' }, h('img', { src: '/ui/favicon.svg', alt: '', width: 22, height: 22 }), h('span', { text: 'Orrery' })),
    nav,
    h('div', { class: 'who' },
      liveDot,
      h('span', { class: 'agent', id: 'agent-name', title: me.scopes.join(', '), text: me.name }),
      h('button', { type: 'button', class: 'secondary small', id: 'sign-out', onclick: () => signOut('Signed out.'), text: 'Sign out' })));
  const main = h('main', { id: 'main', tabindex: '-1' });
  clear(app).append(header, main);
  return main;
}

let main = null;

function route() {
  if (!me) return;
  const { path, params } = parseHash();
  if (cleanup) { cleanup(); cleanup = null; }
  for (const a of document.querySelectorAll('[data-nav]')) a.removeAttribute('aria-current');
  const found = ROUTES.find(([re]) => re.test(path));
  clear(main);
  if (!found) {
    main.append(h('h1', { text: 'Not found' }), h('p', {}, 'No page at this address. ', h('a', { href: '#/', text: 'Go to the overview.' })));
    return;
  }
  const [re, render, nav, title, need] = found;
  const navLink = document.querySelector(`[data-nav=${nav}]`);
  if (navLink) navLink.setAttribute('aria-current', 'page');
  document.title = `${title} · Orrery`;
  if (!allowed(need)) {
    main.append(h('h1', { text: title }), h('p', { class: 'notice error', text: 'This token may not see this page (it needs the admin scope).' }));
    return;
  }
  const match = path.match(re);
  const ctx = { me, live, params, navigate: (hash) => { location.hash = hash; } };
  try {
    cleanup = render(main, match.slice(1), ctx) || null;
  } catch (e) {
    main.append(h('p', { class: 'notice error', role: 'alert', text: String(e.message || e) }));
  }
  if (document.activeElement === document.body || !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function start() {
  main = shell();
  live.start();
  route();
}

window.addEventListener('hashchange', route);

(async function boot() {
  if (!session.token) { signIn(); return; }
  try {
    me = await get('/console/me');
    start();
  } catch (e) {
    if (e.status === 401) return; // already signed out by the 401 handler
    session.clear();
    signInMessage = e.message;
    signIn();
  }
})();
