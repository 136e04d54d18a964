// A schedule in words (best effort; the expression itself is always shown beside it).

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const DAY_NAMES = { SUN: 0, MON: 1, TUE: 2, WED: 3, THU: 4, FRI: 5, SAT: 6 };
const BYDAY = { SU: 0, MO: 1, TU: 2, WE: 3, TH: 4, FR: 5, SA: 6 };
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September',
  'October', 'November', 'December'];
const MONTH_NAMES = { JAN: 1, FEB: 2, MAR: 3, APR: 4, MAY: 5, JUN: 6, JUL: 7, AUG: 8, SEP: 9, OCT: 10, NOV: 11, DEC: 12 };
const MACROS = {
  '@yearly': 'once a year, at midnight on January 1',
  '@annually': 'once a year, at midnight on January 1',
  '@monthly': 'at midnight on the first day of every month',
  '@weekly': 'at midnight every Sunday',
  '@daily': 'every day at midnight',
  '@midnight': 'every day at midnight',
  '@hourly': 'every hour, on the hour',
};

const pad = (n) => String(n).padStart(2, '0');
const isNum = (s) => /^\d+$/.test(s);

function dayName(s) {
  const up = s.toUpperCase();
  if (up in DAY_NAMES) return DAYS[DAY_NAMES[up]];
  if (isNum(s)) return DAYS[Number(s) % 7];
  return s;
}

function list(field, name) {
  return field.split(',').map((part) => {
    const [range, step] = part.split('/');
    const [a, b] = range.split('-');
    const n = (x) => (name ? name(x) : x);
    let text = range === '*' ? 'every' : b !== undefined ? `${n(a)} through ${n(b)}` : n(a);
    if (step) text = range === '*' ? `every ${step}` : `${text}, every ${step}`;
    return text;
  }).join(', ');
}

function monthName(s) {
  const up = s.toUpperCase();
  if (up in MONTH_NAMES) return MONTHS[MONTH_NAMES[up] - 1];
  return isNum(s) ? MONTHS[Number(s) - 1] || s : s;
}

export function describeCron(expr) {
  const e = expr.trim();
  if (e.toLowerCase() in MACROS) return MACROS[e.toLowerCase()];
  const f = e.split(/\s+/);
  if (f.length !== 5) return `cron ${e}`;
  const [min, hour, dom, mon, dow] = f;
  let when;
  if (isNum(min) && isNum(hour)) when = `at ${pad(hour)}:${pad(min)}`;
  else if (isNum(min) && hour === '*') when = min === '0' ? 'every hour, on the hour' : `every hour at minute ${min}`;
  else if (/^\*\/\d+$/.test(min) && hour === '*') when = `every ${min.slice(2)} minutes`;
  else if (min === '*' && hour === '*') when = 'every minute';
  else if (isNum(min) && /^[\d,-]+$/.test(hour)) when = `at minute ${min} past hour ${list(hour)}`;
  else when = `at minute ${list(min)} of ${hour === '*' ? 'every hour' : `hour ${list(hour)}`}`;
  const parts = [when];
  if (dom !== '*' && dom !== '?') parts.push(`on day ${list(dom)} of the month`);
  if (mon !== '*') parts.push(`in ${list(mon, monthName)}`);
  if (dow !== '*' && dow !== '?') parts.push(dow === '1-5' || dow.toUpperCase() === 'MON-FRI' ? 'on weekdays' : `on ${list(dow, dayName)}`);
  if (dom === '*' && dow === '*' && mon === '*' && isNum(min) && isNum(hour)) parts.unshift('every day');
  return parts.join(' ');
}

export function describeRrule(expr) {
  const lines = expr.split(/\r?\n/);
  const rule = lines.find((l) => /^(RRULE:)?FREQ=/i.test(l.trim()));
  if (!rule) return 'recurrence rule';
  const props = Object.fromEntries(rule.replace(/^RRULE:/i, '').split(';').map((p) => p.split('=')).filter((p) => p.length === 2).map(([k, v]) => [k.toUpperCase(), v]));
  const unit = { SECONDLY: 'second', MINUTELY: 'minute', HOURLY: 'hour', DAILY: 'day', WEEKLY: 'week', MONTHLY: 'month', YEARLY: 'year' }[(props.FREQ || '').toUpperCase()] || 'period';
  const n = Number(props.INTERVAL || 1);
  const parts = [n === 1 ? `every ${unit}` : `every ${n} ${unit}s`];
  if (props.BYDAY) {
    const names = props.BYDAY.split(',').map((d) => {
      const m = d.match(/^([+-]?\d+)?([A-Z]{2})$/i);
      if (!m) return d;
      const name = DAYS[BYDAY[m[2].toUpperCase()]] || m[2];
      return m[1] ? `the ${m[1]} ${name}` : name;
    });
    parts.push(`on ${names.join(', ')}`);
  }
  if (props.BYMONTHDAY) parts.push(`on day ${props.BYMONTHDAY} of the month`);
  if (props.BYMONTH) parts.push(`in ${props.BYMONTH.split(',').map(monthName).join(', ')}`);
  if (props.BYHOUR) {
    const mins = (props.BYMINUTE || '0').split(',');
    const times = props.BYHOUR.split(',').flatMap((hh) => mins.map((mm) => `${pad(hh)}:${pad(mm)}`));
    parts.push(`at ${times.join(', ')}`);
  }
  if (props.COUNT) parts.push(`${props.COUNT} times in all`);
  if (props.UNTIL) parts.push(`until ${props.UNTIL}`);
  return parts.join(' ');
}

export function describe(kind, expr) {
  switch (kind) {
    case 'cron': return describeCron(expr);
    case 'rrule': return describeRrule(expr);
    case 'once': return `once, at ${expr}`;
    case 'event': return `whenever an event matching “${expr}” is published`;
    default: return expr;
  }
}
