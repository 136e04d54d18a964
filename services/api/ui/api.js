// The REST client: the bearer token lives in sessionStorage only (never in a URL, a cookie or a log).

const KEY = 'orrery.console.token';

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.details = body && body.details;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function request(method, path, body, opts = {}) {
  const token = opts.token ?? session.token;
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store', credentials: 'omit', signal: opts.signal,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { error: 'network', message: 'The API could not be reached.' });
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, json);
    if (res.status === 401 && !opts.token) onUnauthorized(err);
    throw err;
  }
  return json;
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body, opts) => request('POST', path, body, opts);
export const patch = (path, body) => request('PATCH', path, body);
export const del = (path) => request('DELETE', path);

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
}

// The live run feed: Server-Sent Events read with fetch() (EventSource cannot send the Authorization header),
// falling back to polling while the stream is unavailable (Redis down: 503) and retrying it every 15 s.
export class LiveRuns {
  constructor() {
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.state = 'off';
    this.abort = null;
    this.retry = null;
    this.lastId = null;
  }

  subscribe(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  onState(fn) { this.stateListeners.add(fn); fn(this.state); return () => this.stateListeners.delete(fn); }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    for (const fn of this.stateListeners) fn(s);
  }

  start() {
    if (this.abort || !session.token) return;
    this.connect();
  }

  stop() {
    clearTimeout(this.retry);
    this.retry = null;
    if (this.abort) this.abort.abort();
    this.abort = null;
    this.setState('off');
  }

  async connect() {
    clearTimeout(this.retry);
    const abort = new AbortController();
    this.abort = abort;
    const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${session.token}` };
    if (this.lastId) headers['Last-Event-ID'] = this.lastId;
    try {
      const res = await fetch('/console/runs/stream', { headers, signal: abort.signal, cache: 'no-store', credentials: 'omit' });
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          this.dispatch(block);
        }
      }
      throw new Error('stream ended');
    } catch (e) {
      if (abort.signal.aborted && this.abort !== abort) return;
      if (this.abort !== abort) return;
      this.abort = null;
      this.setState('polling');
      this.retry = setTimeout(() => this.connect(), 15000);
    }
  }

  dispatch(block) {
    let event = 'message';
    let data = '';
    let id = null;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const name = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (name === 'event') event = value;
      else if (name === 'data') data += (data ? '\n' : '') + value;
      else if (name === 'id') id = value;
    }
    if (event === 'hello') { this.setState('live'); return; }
    if (event === 'error') { this.setState('polling'); return; }
    if (event !== 'run') return;
    if (id) this.lastId = id;
    let payload;
    try { payload = JSON.parse(data); } catch { return; }
    for (const fn of this.listeners) fn(payload);
  }
}

export const live = new LiveRuns();
