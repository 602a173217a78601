// End-to-end test of the template admin page (issue 8) in Debian's headless Chromium,
// driven by playwright-core. It needs a running bundle: HERALD_URL=http://127.0.0.1:PORT
// (scripts/e2e.sh starts one). Steps run in order and share one browser and one set of
// templates; it saves e2e/screenshots/admin.png (and failure.png when a step fails).
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { BASE, SHOTS, apiCall, eventually, launchBrowser, stepper, token } from './lib.mjs';

// Names unique to this run, so a rerun against the same tables cannot see old rows.
const RUN = Math.random().toString(36).slice(2, 8);
const WELCOME = `Welcome ${RUN}`;
const WELCOME_V2 = `Welcome ${RUN} v2`;
const RECEIPT = `Receipt ${RUN}`;

let browser;
let page;
const browserErrors = [];

const text = (locator) => locator.innerText();
const rows = (p = page) => p.getByTestId('template-row');
const row = (name, p = page) => rows(p).filter({ has: p.getByTestId('row-name').getByText(name, { exact: true }) });

async function rowNames(p = page) {
  return rows(p).getByTestId('row-name').allInnerTexts();
}

async function newPage() {
  const p = await browser.context.newPage();
  p.setDefaultTimeout(10_000);
  p.on('pageerror', (error) => browserErrors.push(`pageerror: ${error.message}`));
  p.on('console', (message) => {
    // 4xx answers are expected here (401, 403, 404 are part of the test) and Chromium logs
    // each one; anything else red in the console (a CSP refusal, a script error) is a bug.
    if (message.type() === 'error' && !/Failed to load resource/.test(message.text())) {
      browserErrors.push(`console: ${message.text()}`);
    }
  });
  return p;
}

async function logIn(p, bearer, org) {
  await p.goto(`${BASE}/admin`);
  await p.getByTestId('token-input').fill(bearer);
  await p.getByTestId('token-save').click();
  await eventually(async () => assert.match(await text(p.getByTestId('whoami')), new RegExp(`Organization ${org}\\b`)));
  assert.equal(await p.evaluate(() => sessionStorage.getItem('herald.admin.token')), bearer, 'kept for the tab');
  await eventually(async () => assert.equal(await p.getByTestId('template-table').getAttribute('aria-busy'), 'false'));
}

async function search(p, words) {
  await p.getByTestId('filter-search').fill(words);
  await p.getByTestId('filter-apply').click();
}

const step = stepper('failure.png', () => page);

describe('template admin page', { timeout: 180_000 }, () => {
  let admin;
  let welcomeId;

  before(async () => {
    browser = await launchBrowser('admin');
    page = await newPage();
    admin = await token('acme', 'admin');
  });

  after(async () => {
    await browser?.close();
  });

  step('without a token the page says what to do; a bad token is explained', async () => {
    await page.goto(`${BASE}/admin`);
    assert.equal(await page.title(), 'Herald templates');
    await eventually(async () => assert.match(await text(page.getByTestId('notice')), /Paste a token/));
    await page.getByTestId('token-input').fill('not-a-token');
    await page.getByTestId('token-save').click();
    await eventually(async () => assert.match(await text(page.getByTestId('notice')), /Not signed in \(401\)/));
  });

  step('an admin creates an email template; a failed save keeps what was typed', async () => {
    await logIn(page, admin, 'acme');
    await page.getByTestId('new-template').click();
    await page.getByTestId('field-name').fill(WELCOME);
    await page.getByTestId('field-html').fill('<p>Hello {{first_name}}</p>');
    await page.getByTestId('field-variables').fill('first_name');
    // No subject: the API refuses, and says so beside the field.
    await page.getByTestId('editor-save').click();
    await eventually(async () => assert.match(await text(page.getByTestId('error-subject')), /is required/));
    assert.match(await text(page.getByTestId('editor-notice')), /correct the fields/);
    assert.equal(await page.getByTestId('field-subject').getAttribute('aria-invalid'), 'true');
    assert.equal(await page.getByTestId('field-name').inputValue(), WELCOME, 'the name survives');
    assert.equal(await page.getByTestId('field-html').inputValue(), '<p>Hello {{first_name}}</p>');
    assert.equal(await page.getByTestId('field-variables').inputValue(), 'first_name');

    await page.getByTestId('field-subject').fill('Hi {{first_name}}');
    await page.getByTestId('editor-save').click();
    await eventually(async () => assert.match(await text(page.getByTestId('editor-notice')), /Created/));
    assert.equal(await text(page.getByTestId('error-subject')), '', 'the old message is gone');
    await eventually(async () => assert.equal(await row(WELCOME).count(), 1));
    welcomeId = await row(WELCOME).getAttribute('data-id');
    assert.equal(await text(row(WELCOME).locator('[data-col="organization"]')), 'acme');
    assert.equal(await text(row(WELCOME).getByTestId('row-active')), 'yes');
    assert.match(await text(row(WELCOME).locator('[data-col="created"]')), /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$/);
  });

  step('search finds the template and nothing else', async () => {
    const made = await apiCall('POST', '/services/templates/email/', admin, {
      name: RECEIPT, subject: 'Your receipt', text: 'Thanks for your order',
    });
    assert.equal(made.status, 201);
    await search(page, `welcome ${RUN}`);
    await eventually(async () => assert.deepEqual(await rowNames(), [WELCOME]));
    await search(page, `receipt ${RUN}`);
    await eventually(async () => assert.deepEqual(await rowNames(), [RECEIPT]));
    await search(page, `nothing matches ${RUN}`);
    await eventually(async () => assert.ok(await page.getByTestId('empty').isVisible()));
    await search(page, RUN);
    await eventually(async () => assert.deepEqual((await rowNames()).sort(), [RECEIPT, WELCOME]));
  });

  step('edit with a live preview that escapes HTML values', async () => {
    await row(WELCOME).getByTestId('row-edit').click();
    await eventually(async () => assert.match(await text(page.getByTestId('editor-title')), new RegExp(WELCOME)));
    // The variables box starts with every name the template uses.
    await eventually(async () => assert.deepEqual(JSON.parse(await page.getByTestId('preview-variables').inputValue()), { first_name: '' }));

    await page.getByTestId('field-name').fill(WELCOME_V2);
    await page.getByTestId('field-html').fill('<p>Hello <b>{{first_name}}</b></p>');
    assert.ok(await page.getByTestId('preview-stale').isVisible(), 'unsaved edits are flagged in the preview');
    await page.getByTestId('editor-save').click();
    await eventually(async () => assert.match(await text(page.getByTestId('editor-notice')), /Saved/));
    assert.ok(!(await page.getByTestId('preview-stale').isVisible()));

    // Typing the variables re-renders through the preview endpoint.
    await page.getByTestId('preview-variables').fill('{"first_name": "<Ann & Bob>"}');
    await eventually(async () => assert.equal(await text(page.getByTestId('preview-html')), '<p>Hello <b>&lt;Ann &amp; Bob&gt;</b></p>'));
    assert.equal(await text(page.getByTestId('preview-subject')), 'Hi <Ann & Bob>', 'subjects are not HTML');
    // The rendered frame shows the value as text: no <ann> element was made from it.
    const frame = page.frameLocator('[data-testid="preview-frame"]');
    await eventually(async () => assert.equal(await frame.locator('body').innerText(), 'Hello <Ann & Bob>'));
    assert.equal(await frame.locator('b').count(), 1);
    assert.equal(await frame.locator('ann').count(), 0);

    // A missing variable and bad JSON are explained beside the box.
    await page.getByTestId('preview-variables').fill('{}');
    await eventually(async () => assert.match(await text(page.getByTestId('error-preview_variables')), /missing variable: first_name/));
    await page.getByTestId('preview-variables').fill('{"first_name": ');
    await eventually(async () => assert.match(await text(page.getByTestId('error-preview_variables')), /Not valid JSON/));
    await page.getByTestId('preview-variables').fill('{"first_name": "<Ann & Bob>"}');
    await eventually(async () => assert.equal(await text(page.getByTestId('error-preview_variables')), ''));
    await eventually(async () => assert.match(await text(page.getByTestId('preview-html')), /&lt;Ann &amp; Bob&gt;/));

    await eventually(async () => assert.equal(await row(WELCOME_V2).count(), 1, 'the list shows the new name'));
    await page.screenshot({ path: path.join(SHOTS, 'admin.png'), fullPage: true });
  });

  step('deactivate, then filter by active', async () => {
    await row(WELCOME_V2).getByTestId('row-deactivate').click();
    await eventually(async () => assert.equal(await text(row(WELCOME_V2).getByTestId('row-active')), 'no'));
    assert.match(await text(page.getByTestId('notice')), /Deactivated/);
    assert.equal(await page.getByTestId('field-is_active').isChecked(), false, 'the open form follows');
    const stored = await apiCall('GET', `/services/templates/email/${welcomeId}/`, admin);
    assert.equal(stored.body.is_active, false);

    await page.getByTestId('filter-active').selectOption('true');
    await eventually(async () => assert.deepEqual(await rowNames(), [RECEIPT]));
    await page.getByTestId('filter-active').selectOption('false');
    await eventually(async () => assert.deepEqual(await rowNames(), [WELCOME_V2]));
    await page.getByTestId('filter-active').selectOption('');
    await eventually(async () => assert.equal(await rows().count(), 2));
  });

  step('created range filters by day, the "to" day included', async () => {
    const now = new Date();
    const today = [now.getFullYear(), now.getMonth() + 1, now.getDate()].map((n) => String(n).padStart(2, '0')).join('-');
    await page.getByTestId('filter-created-after').fill('2000-01-01');
    await page.getByTestId('filter-created-before').fill('2000-12-31');
    await eventually(async () => assert.ok(await page.getByTestId('empty').isVisible()));
    await page.getByTestId('filter-created-before').fill(today);
    await eventually(async () => assert.equal(await rows().count(), 2));
    await page.getByTestId('filter-created-after').fill(today);
    await eventually(async () => assert.equal(await rows().count(), 2));
    await page.getByTestId('filter-created-after').fill('');
    await page.getByTestId('filter-created-before').fill('');
  });

  step('SMS and message tabs show their list fields, and paging follows next_cursor', async () => {
    const base = `OTP ${RUN}`;
    for (let i = 0; i < 11; i++) {
      const body = i === 0 ? 'Ваш код {{code}}' : `Your code is {{code}} (${i})`;
      const made = await apiCall('POST', '/services/templates/sms/', admin, { name: `${base} ${String(i).padStart(2, '0')}`, body });
      assert.equal(made.status, 201);
    }
    await page.getByTestId('tab-sms').click();
    await page.getByTestId('filter-ordering').selectOption('name');
    await page.getByTestId('filter-limit').selectOption('10');
    await search(page, base);
    // Ten rows of the search, not the ten the table showed before the search answered.
    await eventually(async () => {
      const names = await rowNames();
      assert.equal(names.length, 10);
      assert.ok(names.every((name) => name.startsWith(base)), names.join(', '));
    });
    const first = row(`${base} 00`);
    assert.equal(await text(first.locator('[data-col="encoding"]')), 'UCS-2');
    assert.equal(await text(first.locator('[data-col="segments"]')), '1');
    assert.equal(await text(first.locator('[data-col="characters"]')), '16');
    assert.ok(await page.getByTestId('next-page').isEnabled());
    await page.getByTestId('next-page').click();
    await eventually(async () => assert.deepEqual(await rowNames(), [`${base} 10`]));
    assert.equal(await text(page.getByTestId('page-label')), 'Page 2');
    assert.ok(await page.getByTestId('next-page').isDisabled());
    await page.getByTestId('prev-page').click();
    await eventually(async () => assert.equal(await rows().count(), 10));

    const media = await apiCall('POST', '/services/templates/message/', admin, {
      name: `Promo ${RUN}`, body: 'Sale!', media_urls: ['https://cdn.example.com/a.png'],
    });
    assert.equal(media.status, 201);
    await page.getByTestId('tab-message').click();
    await search(page, `Promo ${RUN}`); // filters stay as they were across tabs
    await eventually(async () => assert.equal(await text(row(`Promo ${RUN}`).locator('[data-col="media"]')), 'yes'));
    await page.getByTestId('tab-email').click();
    await page.getByTestId('filter-ordering').selectOption('-created_at');
    await search(page, RUN);
    await eventually(async () => assert.equal(await rows().count(), 2));
  });

  step('the organization filter: explained for admins, used by superusers', async () => {
    await page.getByTestId('filter-organization').fill('acme');
    await page.getByTestId('filter-apply').click();
    await eventually(async () => assert.match(await text(page.getByTestId('notice')), /Only superusers may filter by organization \(403\)/));
    assert.equal(await rows().count(), 0);
    await page.getByTestId('filter-organization').fill('');
    await page.getByTestId('filter-apply').click();
    await eventually(async () => assert.equal(await rows().count(), 2));

    const root = await newPage();
    await logIn(root, await token('platform', 'superuser'), 'platform');
    await root.getByTestId('filter-organization').fill('acme');
    await search(root, RUN);
    await eventually(async () => assert.deepEqual((await rowNames(root)).sort(), [RECEIPT, WELCOME_V2]));
    assert.equal(await text(row(WELCOME_V2, root).locator('[data-col="organization"]')), 'acme');
    await root.close();
  });

  step('a member of another organization sees none of it and may not create', async () => {
    const other = await newPage();
    const member = await token('globex', 'member');
    await logIn(other, member, 'globex');
    for (const tab of ['email', 'sms', 'message']) {
      await other.getByTestId(`tab-${tab}`).click();
      await eventually(async () => assert.ok(await other.getByTestId('empty').isVisible(), `${tab}: nothing listed`));
    }
    await other.getByTestId('tab-email').click();
    await search(other, RUN);
    await eventually(async () => assert.ok(await other.getByTestId('empty').isVisible()));
    // Not by id either: another organization's template is a 404, like a missing one.
    assert.equal((await apiCall('GET', `/services/templates/email/${welcomeId}/`, member)).status, 404);
    assert.equal((await apiCall('POST', `/services/templates/email/${welcomeId}/preview/`, member, { variables: { first_name: 'x' } })).status, 404);

    await other.getByTestId('new-template').click();
    await other.getByTestId('field-name').fill('Should not exist');
    await other.getByTestId('field-subject').fill('s');
    await other.getByTestId('field-text').fill('t');
    await other.getByTestId('editor-save').click();
    await eventually(async () => assert.match(await text(other.getByTestId('editor-notice')), /\(403\).*admin role/));
    assert.equal(await other.getByTestId('field-name').inputValue(), 'Should not exist');
    await other.close();
  });

  step('delete asks first, then removes the template', async () => {
    await row(WELCOME_V2).getByTestId('row-edit').click();
    await eventually(async () => assert.match(await text(page.getByTestId('editor-title')), new RegExp(WELCOME_V2)));
    // Headless Chromium can report "No dialog is showing" for a confirm it has already
    // closed (Playwright's own recorder writes these handlers with the same catch); what
    // counts is that the question was asked and what happened to the row afterwards.
    let cancelled = '';
    page.once('dialog', (dialog) => {
      cancelled = dialog.message();
      dialog.dismiss().catch(() => {});
    });
    await row(WELCOME_V2).getByTestId('row-delete').click();
    await eventually(async () => assert.match(cancelled, /Delete the email template/));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(await row(WELCOME_V2).count(), 1, 'cancel keeps it');

    let question = '';
    page.once('dialog', (dialog) => {
      question = dialog.message();
      dialog.accept().catch(() => {});
    });
    await row(WELCOME_V2).getByTestId('row-delete').click();
    await eventually(async () => assert.equal(await row(WELCOME_V2).count(), 0));
    assert.match(question, new RegExp(`Delete the email template “${WELCOME_V2}”`));
    assert.match(await text(page.getByTestId('notice')), /Deleted/);
    assert.ok(await page.getByTestId('editor').isHidden(), 'the form of a deleted template closes');
    assert.deepEqual(await rowNames(), [RECEIPT]);
    assert.equal((await apiCall('GET', `/services/templates/email/${welcomeId}/`, admin)).status, 404);
  });

  step('no script errors or CSP refusals in the browser', () => {
    assert.deepEqual(browserErrors, []);
  });
});
