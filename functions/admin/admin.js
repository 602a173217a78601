// Herald template admin page (SPEC §11). Plain JS, no build step, no framework.
// It holds no data of its own: everything goes through the public template API with the
// bearer token the person pastes, so the API's tenancy and role checks apply unchanged.
'use strict';

const API = '/services/templates';
// sessionStorage, not localStorage: the token goes away with the tab.
const TOKEN_KEY = 'herald.admin.token';
const PREVIEW_DELAY_MS = 400;
const SEARCH_DELAY_MS = 350;

const KINDS = {
  email: { label: 'email', columns: [] },
  sms: {
    label: 'SMS',
    columns: [
      { title: 'Characters', cell: (t) => String(t.characters) },
      { title: 'Encoding', cell: (t) => t.encoding },
      { title: 'Segments', cell: (t) => String(t.segments) },
    ],
  },
  message: {
    label: 'message',
    columns: [{ title: 'Media', cell: (t) => (t.has_media ? 'yes' : 'no') }],
  },
};

const state = {
  kind: 'email',
  // The cursor of every page seen so far; the last one is the page on screen (null: first).
  cursors: [null],
  nextCursor: null,
  // The query (without cursor) of the page on screen.
  filters: null,
  listSeq: 0,
  // The open form: { kind, id (null while creating), dirty }.
  editor: null,
  previewSeq: 0,
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  // Text always goes in as text nodes: template names and bodies are never parsed as HTML.
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function debounce(fn, ms) {
  let timer;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

// ---------------------------------------------------------------------------------------
// Token

function currentToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function cleanToken(raw) {
  // People paste "Bearer eyJ…", quoted output or a trailing newline; keep only the token.
  return raw.trim().replace(/^bearer\s+/i, '').replace(/^["']|["']$/g, '').trim();
}

// What the token says about its holder, for display only: the API verifies it, not us.
function describeToken(token) {
  if (!token) return 'No token yet: paste one to start.';
  let claims;
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    claims = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return 'This does not look like a JWT; the API will say whether it accepts it.';
  }
  const org = claims.org_id || claims['custom:org_id'] || '(no organization claim)';
  let roles = claims.roles || claims['cognito:groups'] || [];
  if (typeof roles === 'string') roles = roles.replace(/^\[|\]$/g, '').split(/[\s,]+/).filter(Boolean);
  let text = `Organization ${org}, roles: ${roles.length ? roles.join(', ') : 'none'}`;
  if (typeof claims.exp === 'number') {
    const expires = new Date(claims.exp * 1000);
    text += expires < new Date() ? ' — expired, paste a fresh token' : `, expires ${formatTime(expires.toISOString())}`;
  }
  return text;
}

function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('#token').value = token;
  $('#whoami').textContent = describeToken(token);
}

// ---------------------------------------------------------------------------------------
// API calls and explaining their errors

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (error) {
    return { ok: false, status: 0, problem: { detail: String(error.message || error) } };
  }
  const text = response.status === 204 ? '' : await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.ok) return { ok: true, status: response.status, data };
  // problem+json from the functions, or API Gateway's own {"message": "Unauthorized"}.
  const problem = data && typeof data === 'object' ? data : { detail: text };
  return { ok: false, status: response.status, problem };
}

// A sentence a person can act on, for a failed call. `action` says what was tried.
function explain(result, action) {
  const detail = (result.problem && (result.problem.detail || result.problem.message)) || '';
  const also = detail ? ` The API said: “${detail}”` : '';
  switch (result.status) {
    case 0:
      return `Could not reach the API to ${action}. Check that the bundle is running.${also}`;
    case 401:
      return `Not signed in (401): the token is missing, expired or not accepted. Paste a fresh token above (locally: /local/token?org=acme&role=admin).`;
    case 403:
      if (action === 'list templates' && filterValue('organization')) {
        return 'Only superusers may filter by organization (403). Clear the Organization filter, or use a token with the superuser role.';
      }
      if (action === 'list templates' || action === 'preview') {
        return `Your token may not ${action} (403): it needs at least the member role.${also}`;
      }
      return `Your token may not ${action} (403): creating, changing and deleting templates needs the admin role; members can only list and preview.${also}`;
    case 404:
      return `Could not ${action} (404): the template no longer exists, or belongs to another organization.`;
    case 409:
      return `Someone else changed this template at the same moment (409). Your edits are still in the form: save again to overwrite theirs, or close and reopen the template to see them.`;
    case 400: {
      const errors = result.problem && result.problem.errors;
      if (errors && Object.keys(errors).length) {
        return `Could not ${action}: please correct the fields marked below.`;
      }
      return `Could not ${action} (400).${also}`;
    }
    case 413:
      return `Could not ${action}: the template is too large (413).`;
    default:
      if (result.status >= 500) {
        return `The server failed to ${action} (${result.status}). Nothing you typed is lost; try again in a moment.${also}`;
      }
      return `Could not ${action} (${result.status}).${also}`;
  }
}

function showNotice(node, text, tone = 'error') {
  node.textContent = text;
  node.dataset.tone = tone;
  node.hidden = !text;
}

const notice = (text, tone) => showNotice($('#notice'), text, tone);

// ---------------------------------------------------------------------------------------
// The list

function filterValue(name) {
  const field = $('#filters').elements[name];
  return field ? field.value.trim() : '';
}

// A day picked in the date filters, as an exact instant. The day is the person's own (the
// table shows local times too), and "to" covers that whole day: the API reads a bare
// YYYY-MM-DD as midnight UTC at its start, which would leave the day itself out.
function dayBound(value, end) {
  const [year, month, day] = value.split('-').map(Number);
  const time = end ? new Date(year, month - 1, day, 23, 59, 59, 999) : new Date(year, month - 1, day);
  return Number.isNaN(time.getTime()) ? value : time.toISOString();
}

function listQuery() {
  const params = new URLSearchParams();
  for (const name of ['search', 'is_active', 'organization', 'ordering', 'limit']) {
    const value = filterValue(name);
    if (value) params.set(name, value);
  }
  if (filterValue('created_after')) params.set('created_after', dayBound(filterValue('created_after'), false));
  if (filterValue('created_before')) params.set('created_before', dayBound(filterValue('created_before'), true));
  return params;
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function renderHead() {
  const row = $('#templates thead tr');
  const titles = ['Name', 'Organization', 'Active', 'Created', ...KINDS[state.kind].columns.map((c) => c.title), ''];
  row.replaceChildren(...titles.map((title) => el('th', { scope: 'col' }, title)));
}

function renderRows(items) {
  const body = $('#templates tbody');
  body.replaceChildren(
    ...items.map((t) => {
      const extra = KINDS[state.kind].columns.map((c) => el('td', { 'data-col': c.title.toLowerCase() }, c.cell(t)));
      return el(
        'tr',
        { 'data-testid': 'template-row', 'data-id': t.id, 'data-active': String(t.is_active), class: t.is_active ? '' : 'inactive' },
        el('td', { 'data-col': 'name' },
          el('button', { type: 'button', class: 'link', 'data-testid': 'row-name', onclick: () => openEditor(state.kind, t.id) }, t.name)),
        el('td', { 'data-col': 'organization' }, t.organization),
        el('td', { 'data-col': 'active', 'data-testid': 'row-active' }, t.is_active ? 'yes' : 'no'),
        el('td', { 'data-col': 'created' }, el('time', { datetime: t.created_at, title: t.created_at }, formatTime(t.created_at))),
        ...extra,
        el('td', { class: 'row-actions' },
          el('button', { type: 'button', class: 'secondary', 'data-testid': 'row-edit', onclick: () => openEditor(state.kind, t.id) }, 'Edit'),
          t.is_active
            ? el('button', { type: 'button', class: 'secondary', 'data-testid': 'row-deactivate', onclick: () => setActive(t, false) }, 'Deactivate')
            : el('button', { type: 'button', class: 'secondary', 'data-testid': 'row-activate', onclick: () => setActive(t, true) }, 'Activate'),
          el('button', { type: 'button', class: 'danger', 'data-testid': 'row-delete', onclick: () => deleteTemplate(t) }, 'Delete')),
      );
    }),
  );
  $('#empty').hidden = items.length > 0;
}

function renderPager() {
  const page = state.cursors.length;
  $('#page-label').textContent = `Page ${page}`;
  $('#first-page').disabled = page === 1;
  $('#prev-page').disabled = page === 1;
  $('#next-page').disabled = !state.nextCursor;
}

// `filters` are the query of the page on screen when paging (a cursor is bound to the query
// that made it; the inputs may have changed since), fresh from the inputs otherwise.
async function loadList(filters = listQuery()) {
  // Only the newest request may draw: a slow answer to an older filter must not win.
  const seq = ++state.listSeq;
  const query = new URLSearchParams(filters);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) query.set('cursor', cursor);
  const table = $('#templates');
  table.setAttribute('aria-busy', 'true');
  renderHead();
  if (!currentToken()) {
    renderRows([]);
    state.nextCursor = null;
    renderPager();
    table.setAttribute('aria-busy', 'false');
    notice('Paste a token above to see templates.', 'info');
    return;
  }
  const result = await api('GET', `${API}/${state.kind}/?${query}`);
  if (seq !== state.listSeq) return;
  state.filters = filters;
  table.setAttribute('aria-busy', 'false');
  if (!result.ok) {
    renderRows([]);
    $('#empty').hidden = true;
    state.nextCursor = null;
    renderPager();
    const errors = result.problem && result.problem.errors;
    const fields = errors ? Object.entries(errors).map(([f, m]) => `${f}: ${m.join('; ')}`).join(' · ') : '';
    notice(explain(result, 'list templates') + (fields ? ` ${fields}` : ''), 'error');
    return;
  }
  if ($('#notice').dataset.tone !== 'ok') notice('');
  renderRows(result.data.items || []);
  state.nextCursor = result.data.next_cursor || null;
  renderPager();
}

function reloadFromFirstPage() {
  state.cursors = [null];
  return loadList();
}

const reloadSoon = debounce(reloadFromFirstPage, SEARCH_DELAY_MS);

// ---------------------------------------------------------------------------------------
// Row actions

async function setActive(template, active) {
  const verb = active ? 'activate' : 'deactivate';
  const result = await api('PATCH', `${API}/${state.kind}/${template.id}/`, { is_active: active });
  if (!result.ok) {
    notice(explain(result, `${verb} “${template.name}”`), 'error');
    return;
  }
  notice(`${active ? 'Activated' : 'Deactivated'} “${template.name}”.`, 'ok');
  // Keep an open, untouched form in step with the change; an edited one is left alone.
  if (state.editor && state.editor.id === template.id && !state.editor.dirty) {
    $('#f-is_active').checked = active;
  }
  await loadList();
}

async function deleteTemplate(template) {
  const label = KINDS[state.kind].label;
  if (!window.confirm(`Delete the ${label} template “${template.name}”? It disappears from the API and cannot be restored from this page.`)) {
    return;
  }
  const result = await api('DELETE', `${API}/${state.kind}/${template.id}/`);
  if (!result.ok) {
    notice(explain(result, `delete “${template.name}”`), 'error');
    return;
  }
  notice(`Deleted “${template.name}”.`, 'ok');
  if (state.editor && state.editor.id === template.id) closeEditor(true);
  await loadList();
}

// ---------------------------------------------------------------------------------------
// The form

function fieldsOf(kind) {
  return $$('#editor-form .field').filter((f) => !f.dataset.kinds || f.dataset.kinds.split(' ').includes(kind));
}

function clearFieldErrors(root = $('#editor')) {
  for (const p of $$('.field-error', root)) p.textContent = '';
  for (const input of $$('[aria-invalid]', root)) input.removeAttribute('aria-invalid');
}

function showFieldError(field, messages) {
  const box = $(`.field[data-field="${field}"]`);
  if (!box || box.hidden) return false;
  $('.field-error', box).textContent = messages.join(' ');
  const input = $('input, textarea, select', box);
  if (input) input.setAttribute('aria-invalid', 'true');
  return true;
}

function confirmDiscard() {
  return !state.editor || !state.editor.dirty || window.confirm('Discard the changes you have not saved?');
}

function fillForm(kind, t) {
  const form = $('#editor-form');
  form.elements.name.value = t.name || '';
  form.elements.is_active.checked = t.is_active !== false;
  form.elements.subject.value = t.subject || '';
  form.elements.html.value = t.html || '';
  form.elements.text.value = t.text || '';
  form.elements.variables.value = (t.variables || []).join(', ');
  form.elements.body.value = t.body || '';
  form.elements.media_urls.value = (t.media_urls || []).join('\n');
}

// The request body from what is on screen: only the fields of this kind.
function formBody(kind) {
  const f = $('#editor-form').elements;
  const body = { name: f.name.value, is_active: f.is_active.checked };
  if (kind === 'email') {
    body.subject = f.subject.value;
    body.html = f.html.value;
    body.text = f.text.value;
    body.variables = f.variables.value.split(/[\s,]+/).filter(Boolean);
  } else {
    body.body = f.body.value;
    if (kind === 'message') body.media_urls = f.media_urls.value.split('\n').map((s) => s.trim()).filter(Boolean);
  }
  return body;
}

function showEditor(kind, id, title) {
  state.editor = { kind, id, dirty: false };
  const all = $$('#editor-form .field');
  const visible = new Set(fieldsOf(kind));
  for (const field of all) field.hidden = !visible.has(field);
  $('#editor-title').textContent = title;
  $('#editor').dataset.kind = kind;
  $('#editor').hidden = false;
  showNotice($('#editor-notice'), '');
  clearFieldErrors();
  renderPreviewPanel();
}

function openNew() {
  if (!confirmDiscard()) return;
  const kind = state.kind;
  fillForm(kind, { is_active: true });
  showEditor(kind, null, `New ${KINDS[kind].label} template`);
  $('#preview-variables').value = '{}';
  $('#preview-output').replaceChildren();
  $('#f-name').focus();
}

async function openEditor(kind, id) {
  if (state.editor && state.editor.id === id) return;
  if (!confirmDiscard()) return;
  const result = await api('GET', `${API}/${kind}/${id}/`);
  if (!result.ok) {
    notice(explain(result, 'open the template'), 'error');
    return;
  }
  const t = result.data;
  fillForm(kind, t);
  showEditor(kind, t.id, `Edit ${KINDS[kind].label} template “${t.name}”`);
  $('#preview-variables').value = JSON.stringify(sampleVariables(kind, t), null, 2);
  $('#preview-output').replaceChildren();
  $('#editor').scrollIntoView({ block: 'start' });
  runPreview();
}

function closeEditor(force = false) {
  if (!force && !confirmDiscard()) return;
  state.editor = null;
  $('#editor').hidden = true;
}

async function save(event) {
  event.preventDefault();
  const editor = state.editor;
  if (!editor) return;
  const body = formBody(editor.kind);
  const creating = editor.id === null;
  const result = creating
    ? await api('POST', `${API}/${editor.kind}/`, body)
    : await api('PUT', `${API}/${editor.kind}/${editor.id}/`, body);
  clearFieldErrors($('#editor-form'));
  if (!result.ok) {
    // Nothing in the form is touched: the person fixes the marked fields and saves again.
    const errors = (result.problem && result.problem.errors) || {};
    const unplaced = Object.entries(errors).filter(([field, messages]) => !showFieldError(field, messages));
    let text = explain(result, creating ? 'create the template' : 'save the template');
    if (unplaced.length) text += ' ' + unplaced.map(([f, m]) => `${f}: ${m.join('; ')}`).join(' · ');
    showNotice($('#editor-notice'), text, 'error');
    return;
  }
  const t = result.data;
  fillForm(editor.kind, t);
  state.editor = { kind: editor.kind, id: t.id, dirty: false };
  $('#editor-title').textContent = `Edit ${KINDS[editor.kind].label} template “${t.name}”`;
  showNotice($('#editor-notice'), creating ? `Created “${t.name}”.` : `Saved “${t.name}”.`, 'ok');
  if (creating) $('#preview-variables').value = JSON.stringify(sampleVariables(editor.kind, t), null, 2);
  renderPreviewPanel();
  runPreview();
  if (editor.kind === state.kind) await loadList();
}

// ---------------------------------------------------------------------------------------
// Live preview: renders the saved template with the variables typed here, through the API.

// A starting point for the variables box: each name the template uses, set to "".
function sampleVariables(kind, t) {
  const names = new Set(kind === 'email' ? t.variables || [] : []);
  const sources = kind === 'email' ? [t.subject, t.html, t.text] : [t.body];
  for (const source of sources) {
    for (const match of String(source || '').matchAll(/\{\{\{?\s*([A-Za-z_][\w.]*)\s*\}?\}\}/g)) {
      if (!['else', 'this'].includes(match[1])) names.add(match[1]);
    }
  }
  const sample = {};
  for (const name of names) {
    // "user.first" means {"user": {"first": ""}}.
    const parts = name.split('.');
    let node = sample;
    parts.forEach((part, i) => {
      if (i === parts.length - 1) {
        if (!(part in node)) node[part] = '';
      } else {
        if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
        node = node[part];
      }
    });
  }
  return sample;
}

function renderPreviewPanel() {
  const saved = Boolean(state.editor && state.editor.id);
  $('#preview-unsaved').hidden = saved;
  $('#preview-live').hidden = !saved;
  $('#preview-stale').hidden = !(saved && state.editor.dirty);
}

function section(title, ...children) {
  return el('div', { class: 'preview-part' }, el('h4', {}, title), ...children);
}

function renderPreview(kind, out) {
  const parts = [];
  if (kind === 'email') {
    parts.push(section('Subject', el('p', { class: 'mono', 'data-testid': 'preview-subject' }, out.subject)));
    if (out.html !== null && out.html !== undefined) {
      // The rendered HTML in a sandboxed frame (no scripts, no same-origin access), and its
      // source, so the escaping of the values can be seen.
      const frame = el('iframe', { sandbox: '', title: 'Rendered HTML', 'data-testid': 'preview-frame', referrerpolicy: 'no-referrer' });
      frame.srcdoc = out.html;
      parts.push(section('HTML', frame, el('pre', { 'data-testid': 'preview-html' }, out.html)));
    }
    if (out.text !== null && out.text !== undefined) {
      parts.push(section('Text', el('pre', { 'data-testid': 'preview-text' }, out.text)));
    }
  } else {
    parts.push(section('Body', el('pre', { 'data-testid': 'preview-body' }, out.body)));
    if (kind === 'sms') {
      const segments = out.segments === 1 ? '1 segment' : `${out.segments} segments`;
      parts.push(el('p', { class: 'hint', 'data-testid': 'preview-measure' }, `${out.characters} characters, ${out.encoding}, ${segments}`));
    } else if ((out.media_urls || []).length) {
      parts.push(section('Media', el('ul', {}, ...out.media_urls.map((u) => el('li', { class: 'mono' }, u)))));
    }
  }
  $('#preview-output').replaceChildren(...parts);
}

async function runPreview() {
  const editor = state.editor;
  if (!editor || !editor.id) return;
  const seq = ++state.previewSeq;
  const box = $('.field[data-field="preview_variables"]');
  clearFieldErrors(box);
  let variables;
  try {
    variables = JSON.parse($('#preview-variables').value || '{}');
  } catch (error) {
    showFieldError('preview_variables', [`Not valid JSON: ${error.message}`]);
    $('#preview-status').textContent = 'Preview paused until the variables are valid JSON.';
    return;
  }
  if (typeof variables !== 'object' || variables === null || Array.isArray(variables)) {
    showFieldError('preview_variables', ['Must be a JSON object, like {"first_name": "Ann"}.']);
    $('#preview-status').textContent = 'Preview paused until the variables are a JSON object.';
    return;
  }
  $('#preview-status').textContent = 'Rendering…';
  const result = await api('POST', `${API}/${editor.kind}/${editor.id}/preview/`, { variables });
  if (seq !== state.previewSeq || state.editor !== editor) return;
  if (!result.ok) {
    const errors = (result.problem && result.problem.errors) || {};
    if (errors.variables) showFieldError('preview_variables', errors.variables);
    $('#preview-status').textContent = explain(result, 'preview');
    $('#preview-output').replaceChildren();
    return;
  }
  $('#preview-status').textContent = `Rendered at ${new Date().toLocaleTimeString()}.`;
  renderPreview(editor.kind, result.data);
}

const previewSoon = debounce(runPreview, PREVIEW_DELAY_MS);

// ---------------------------------------------------------------------------------------
// Wiring

function selectKind(kind) {
  if (kind === state.kind) return;
  if (state.editor && state.editor.kind !== kind) {
    if (!confirmDiscard()) return;
    closeEditor(true);
  }
  state.kind = kind;
  for (const tab of $$('.tabs [role="tab"]')) tab.setAttribute('aria-selected', String(tab.dataset.kind === kind));
  notice('');
  reloadFromFirstPage();
}

function init() {
  // Tie each field's message to its input, so screen readers read it with the field.
  for (const box of $$('.field')) {
    const input = $('input, textarea, select', box);
    const error = $('.field-error', box);
    if (input && error) {
      error.id = `${input.id}-error`;
      input.setAttribute('aria-describedby', error.id);
    }
  }

  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(cleanToken($('#token').value));
    notice('');
    reloadFromFirstPage();
  });
  $('#token-clear').addEventListener('click', () => {
    setToken('');
    reloadFromFirstPage();
  });

  for (const tab of $$('.tabs [role="tab"]')) tab.addEventListener('click', () => selectKind(tab.dataset.kind));

  const filters = $('#filters');
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    reloadSoon.cancel();
    reloadFromFirstPage();
  });
  filters.addEventListener('change', (event) => {
    if (event.target.type !== 'search' && event.target.type !== 'text') reloadFromFirstPage();
  });
  filters.addEventListener('input', (event) => {
    if (event.target.type === 'search' || event.target.type === 'text') reloadSoon();
  });
  $('#new-template').addEventListener('click', openNew);

  $('#first-page').addEventListener('click', () => reloadFromFirstPage());
  $('#prev-page').addEventListener('click', () => {
    if (state.cursors.length > 1) state.cursors.pop();
    loadList(state.filters || listQuery());
  });
  $('#next-page').addEventListener('click', () => {
    if (!state.nextCursor) return;
    state.cursors.push(state.nextCursor);
    loadList(state.filters || listQuery());
  });

  const form = $('#editor-form');
  form.addEventListener('submit', save);
  form.addEventListener('input', () => {
    if (!state.editor) return;
    state.editor.dirty = true;
    renderPreviewPanel();
  });
  $('#editor-cancel').addEventListener('click', () => closeEditor());
  $('#editor-close').addEventListener('click', () => closeEditor());
  $('#preview-variables').addEventListener('input', previewSoon);

  // Leaving the page with unsaved edits asks first.
  window.addEventListener('beforeunload', (event) => {
    if (state.editor && state.editor.dirty) event.preventDefault();
  });

  setToken(currentToken());
  loadList();
}

document.addEventListener('DOMContentLoaded', init);
