// Herald dashboard (issue 18): an organization's last 24 hours or 7 days from the public API
// (/services/analytics/, the email and SMS lists), drawn as SVG by this file alone (CSP:
// 'self', no external scripts). A platform superuser also sees the dead-letter queues and
// can redrive them. The token is the one the templates page keeps for this tab.
'use strict';

const TOKEN_KEY = 'herald.admin.token';
const SVG = 'http://www.w3.org/2000/svg';
// The statuses a chart stacks, in funnel order, and their colours.
const STATUSES = [
  ['queued', '#8aa4c0'],
  ['sending', '#b7c7d8'],
  ['sent', '#0b5cad'],
  ['delivered', '#1e6b35'],
  ['received', '#3c9d5d'],
  ['bounced', '#b3261e'],
  ['failed', '#d9822b'],
  ['suppressed', '#6c5ce7'],
  ['canceled', '#9aa3ab'],
];

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function describeToken(raw) {
  if (!raw) return 'No token yet: paste one to start.';
  try {
    const claims = JSON.parse(atob(raw.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    const roles = [].concat(claims.roles || claims['cognito:groups'] || []).join(', ');
    return `${claims.org_id || '?'} · ${roles || 'no roles'}`;
  } catch {
    return 'A token that is not a JWT.';
  }
}

async function api(method, path) {
  const headers = { Accept: 'application/json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  try {
    const response = await fetch(path, { method, headers, cache: 'no-store' });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    return { ok: response.ok, status: response.status, data };
  } catch (error) {
    return { ok: false, status: 0, data: { detail: String(error.message || error) } };
  }
}

function notice(text, tone = 'error') {
  const node = $('#notice');
  node.textContent = text;
  node.dataset.tone = tone;
  node.hidden = !text;
}

function explain(result, what) {
  const detail = (result.data && (result.data.detail || result.data.message)) || '';
  if (result.status === 401) return `Not signed in (401): paste a fresh token (locally: /local/token?org=acme&role=admin).`;
  if (result.status === 403) return `Your token may not ${what} (403). ${detail}`;
  return `Could not ${what} (${result.status || 'no answer'}). ${detail}`;
}

// The query for the chosen range: its start, bucket size and the organization filter.
function rangeQuery() {
  const form = $('#range-form');
  const days = form.range.value === '7d' ? 7 : 1;
  const from = new Date(Date.now() - days * 86_400_000);
  const params = new URLSearchParams({
    granularity: days === 1 ? 'hour' : 'day',
    created_after: from.toISOString(),
  });
  const org = form.organization.value.trim();
  if (org) params.set('organization', org);
  return { params, days, from };
}

// Every bucket of the range, so quiet hours show as gaps rather than vanishing.
function buckets(granularity, from, to) {
  const keys = [];
  const step = granularity === 'hour' ? 3_600_000 : 86_400_000;
  const start = new Date(from);
  if (granularity === 'hour') start.setUTCMinutes(0, 0, 0); else start.setUTCHours(0, 0, 0, 0);
  for (let t = start.getTime(); t <= new Date(to).getTime(); t += step) {
    const iso = new Date(t).toISOString();
    keys.push(granularity === 'hour' ? `${iso.slice(0, 13)}:00:00Z` : iso.slice(0, 10));
  }
  return keys;
}

// A stacked bar chart of one channel's status counts per bucket.
function drawChart(figure, series, keys, granularity) {
  const plot = figure.querySelector('.plot');
  plot.replaceChildren();
  const counts = new Map(keys.map((k) => [k, new Map()]));
  for (const point of series) {
    const bucket = counts.get(point.bucket);
    if (bucket) bucket.set(point.status, (bucket.get(point.status) || 0) + point.count);
  }
  const totals = [...counts.values()].map((m) => [...m.values()].reduce((a, b) => a + b, 0));
  const top = Math.max(1, ...totals);
  const [width, height, left, bottom] = [640, 220, 36, 24];
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'data-testid': 'chart-svg' });
  const bar = (width - left) / keys.length;
  for (const fraction of [0, 0.5, 1]) {
    const y = (height - bottom) * (1 - fraction) + 4;
    chart.append(svg('line', { x1: left, x2: width, y1: y, y2: y, stroke: '#d7dde3' }));
    const label = svg('text', { x: left - 4, y: y + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#5b6670' });
    label.textContent = String(Math.round(top * fraction));
    chart.append(label);
  }
  keys.forEach((key, index) => {
    let y = height - bottom + 4;
    for (const [status, colour] of STATUSES) {
      const count = counts.get(key).get(status) || 0;
      if (!count) continue;
      const h = ((height - bottom) * count) / top;
      y -= h;
      const rect = svg('rect', {
        x: left + index * bar + 1, y, width: Math.max(1, bar - 2), height: h, fill: colour,
        'data-status': status, 'data-count': count,
      });
      const tip = svg('title');
      tip.textContent = `${key}: ${count} ${status}`;
      rect.append(tip);
      chart.append(rect);
    }
    const every = Math.ceil(keys.length / 8);
    if (index % every === 0) {
      const label = svg('text', { x: left + index * bar + bar / 2, y: height - 6, 'text-anchor': 'middle', 'font-size': 10, fill: '#5b6670' });
      label.textContent = granularity === 'hour' ? key.slice(11, 16) : key.slice(5);
      chart.append(label);
    }
  });
  const legend = el('div', { class: 'legend' });
  const seen = new Set(series.map((p) => p.status));
  for (const [status, colour] of STATUSES) {
    if (!seen.has(status)) continue;
    const total = series.filter((p) => p.status === status).reduce((a, p) => a + p.count, 0);
    legend.append(el('span', { 'data-testid': `legend-${status}` },
      el('span', { class: 'swatch', style: `background:${colour}` }), `${status} ${total}`));
  }
  if (!seen.size) legend.append(el('span', {}, 'Nothing sent in this range.'));
  plot.append(chart, legend);
}

function percent(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(1)} %` : '—';
}

function drawRates(series) {
  const total = (channel, status) => series
    .filter((p) => p.channel === channel && p.status === status)
    .reduce((a, p) => a + p.count, 0);
  const cards = [];
  for (const channel of ['email', 'sms']) {
    const sent = total(channel, 'sent');
    cards.push(
      [`${channel}-sent`, `${channel} sent`, String(sent)],
      [`${channel}-delivery`, `${channel} delivery rate`, percent(total(channel, 'delivered'), sent)],
    );
  }
  cards.push(['email-bounce', 'email bounce rate', percent(total('email', 'bounced'), total('email', 'sent'))]);
  $('[data-testid="rates"]').replaceChildren(...cards.map(([id, label, value]) => el('div',
    { class: 'card', 'data-testid': `rate-${id}` },
    el('div', { class: 'value' }, value), el('div', { class: 'label' }, label))));
}

async function drawFailures(query) {
  const rows = [];
  for (const channel of ['email', 'sms']) {
    const params = new URLSearchParams({ status: 'failed', limit: '10', created_after: query.from.toISOString() });
    const org = query.params.get('organization');
    if (org) params.set('organization', org);
    const result = await api('GET', `/services/${channel}/?${params}`);
    if (!result.ok) continue;
    for (const item of result.data.items) rows.push({ channel, item });
  }
  rows.sort((a, b) => (b.item.updated_at || '').localeCompare(a.item.updated_at || ''));
  $('[data-testid="failures"] tbody').replaceChildren(...rows.slice(0, 10).map(({ channel, item }) => el('tr',
    { 'data-testid': 'failure-row' },
    el('td', {}, new Date(item.updated_at).toLocaleString()),
    el('td', {}, channel),
    el('td', {}, String(item.to || '')),
    el('td', {}, String(item.failure_reason || item.error || 'unknown')))));
  $('[data-testid="no-failures"]').hidden = rows.length > 0;
}

async function drawDeadLetters() {
  const section = $('#dead-letters');
  const result = await api('GET', '/services/admin/dead-letters/');
  // Only platform superusers may see them: for anyone else the section stays hidden.
  section.hidden = !result.ok;
  if (!result.ok) return;
  section.querySelector('tbody').replaceChildren(...result.data.items.map((queue) => {
    const oldest = queue.messages[0];
    const button = el('button', { type: 'button', class: 'secondary', 'data-testid': `redrive-${queue.queue}` }, 'Redrive');
    button.disabled = queue.depth === 0;
    button.addEventListener('click', async () => {
      button.disabled = true;
      const reply = await api('POST', `/services/admin/dead-letters/${queue.queue}/redrive/`);
      if (reply.ok) notice(`Redriving ${queue.queue}: its messages are moving back to their queue.`, 'ok');
      else notice(explain(reply, `redrive ${queue.queue}`));
      setTimeout(drawDeadLetters, 1000);
    });
    return el('tr', { 'data-testid': `dlq-${queue.queue}` },
      el('td', {}, queue.queue),
      el('td', { 'data-testid': `depth-${queue.queue}` }, String(queue.depth)),
      el('td', {}, oldest ? `${oldest.kind} · ${oldest.organization || '?'} · ${oldest.sent_at || ''}` : ''),
      el('td', {}, button));
  }));
}

// One address's or number's consent history (issue 19), newest first: every change with
// its source and evidence, as GET /services/consent/ keeps it.
async function lookUpConsent(subject) {
  delete document.body.dataset.consent;
  const params = new URLSearchParams(subject.startsWith('+') ? { phone: subject } : { address: subject });
  const org = $('[data-testid="organization"]').value.trim();
  if (org) params.set('organization', org);
  const result = await api('GET', `/services/consent/?${params}`);
  if (!result.ok) {
    notice(explain(result, 'read the consent ledger'));
    return;
  }
  notice('');
  const rows = result.data.history.slice().reverse().map((change) => el('tr', { 'data-testid': 'consent-row' },
    el('td', {}, new Date(change.at).toLocaleString()),
    el('td', {}, change.topic),
    el('td', {}, change.state),
    el('td', {}, change.source),
    el('td', {}, change.actor),
    el('td', {}, Object.entries(change.evidence || {}).map(([key, value]) => `${key}: ${value}`).join(', '))));
  $('[data-testid="consent-history"] tbody').replaceChildren(...rows);
  $('[data-testid="consent-empty"]').hidden = rows.length > 0;
  document.body.dataset.consent = 'loaded';
}

async function refresh() {
  delete document.body.dataset.loaded;
  if (!token()) {
    notice('Paste a token above to see the dashboard.', 'info');
    return;
  }
  const query = rangeQuery();
  const result = await api('GET', `/services/analytics/?${query.params}`);
  if (!result.ok) {
    notice(explain(result, 'read the analytics'));
    return;
  }
  notice('');
  const { series, granularity, from, to } = result.data;
  const keys = buckets(granularity, from, to);
  for (const channel of ['email', 'sms']) {
    drawChart($(`[data-testid="chart-${channel}"]`), series.filter((p) => p.channel === channel), keys, granularity);
  }
  drawRates(series);
  await drawFailures(query);
  await drawDeadLetters();
  document.body.dataset.loaded = 'true';
}

document.addEventListener('DOMContentLoaded', () => {
  $('#token').value = token();
  $('#whoami').textContent = describeToken(token());
  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const raw = $('#token').value.trim().replace(/^bearer\s+/i, '').replace(/^"|"$/g, '');
    if (raw) sessionStorage.setItem(TOKEN_KEY, raw); else sessionStorage.removeItem(TOKEN_KEY);
    $('#whoami').textContent = describeToken(raw);
    refresh();
  });
  $('#range-form').addEventListener('submit', (event) => {
    event.preventDefault();
    refresh();
  });
  $('#consent-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const subject = $('[data-testid="consent-subject"]').value.trim();
    if (subject) lookUpConsent(subject);
  });
  refresh();
});
