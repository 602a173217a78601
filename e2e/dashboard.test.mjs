// End-to-end test of the dashboard page (issue 18) in headless Chromium, driven by
// playwright-core, against a running bundle (HERALD_URL; scripts/e2e.sh starts one). It
// sends real emails and SMS through the API, fills a dead-letter queue by hand (the local
// runner's POST /local/queues/<LogicalId>), then reads the charts, rates and failures as an
// organization's admin and redrives the DLQ as a platform superuser. It saves
// e2e/screenshots/dashboard.png (committed) and dashboard-failure.png when a step fails.
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { BASE, SHOTS, apiCall, eventually as eventuallyWithin, launchBrowser, stepper, token } from './lib.mjs';

// Sends, webhooks and the events queue take their time: wait up to 30 s.
const eventually = (check) => eventuallyWithin(check, 30_000);

// An organization of this run's own, so reruns against the same tables start from zero.
const ORG = `dash-${Math.random().toString(36).slice(2, 8)}`;

let browser;
let page;
const browserErrors = [];

async function reaches(bearer, channel, id, statuses) {
  return eventually(async () => {
    const reply = await apiCall('GET', `/services/${channel}/${id}/`, bearer);
    assert.ok(statuses.includes(reply.body.status), `${channel} ${id} is ${reply.body.status}`);
    return reply.body;
  });
}

const step = stepper('dashboard-failure.png', () => page);
const text = (testId) => page.getByTestId(testId).innerText();

async function useToken(bearer, organization = '') {
  await page.getByTestId('token-input').fill(bearer);
  await page.getByTestId('organization').fill(organization);
  await page.getByTestId('token-save').click();
}

describe('dashboard page', { timeout: 180_000 }, () => {
  let admin;
  let superuser;
  let lastEmail;

  before(async () => {
    browser = await launchBrowser('dashboard');
    page = await browser.context.newPage();
    page.setDefaultTimeout(10_000);
    page.on('pageerror', (error) => browserErrors.push(`pageerror: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && !/Failed to load resource/.test(message.text())) {
        browserErrors.push(`console: ${message.text()}`);
      }
    });
    admin = await token(ORG, 'admin');
    superuser = await token('platform', 'superuser');
  });

  after(async () => {
    await browser?.close();
  });

  step('sends, a bounce and a failed SMS go through the API', async () => {
    const emails = [];
    for (const to of ['ann@example.com', 'bob@example.com', 'cy@example.com', 'gone@bounce.test']) {
      const reply = await apiCall('POST', '/services/email/', admin, { to, subject: 'Hi', text: 'Hello' });
      assert.equal(reply.status, 202, JSON.stringify(reply.body));
      emails.push(reply.body.id);
    }
    for (const id of emails.slice(0, 3)) await reaches(admin, 'email', id, ['delivered']);
    await reaches(admin, 'email', emails[3], ['bounced']);
    lastEmail = emails[0];
    const delivered = await apiCall('POST', '/services/sms/', admin, { to: '+14155552671', body: 'Your code is 1234' });
    assert.equal(delivered.status, 202, JSON.stringify(delivered.body));
    await reaches(admin, 'sms', delivered.body.id, ['delivered']);
    // Twilio refuses the next message for good: an invalid To (21211).
    const fault = await fetch(`${BASE}/sandbox/twilio/_faults`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ status: 400, code: 21211, count: 1 }),
    });
    assert.ok(fault.ok, `the fault was not taken: ${fault.status}`);
    const failed = await apiCall('POST', '/services/sms/', admin, { to: '+14155552672', body: 'Your code is 5678' });
    assert.equal(failed.status, 202);
    await reaches(admin, 'sms', failed.body.id, ['failed']);
  });

  step('a job lands in the email send DLQ', async () => {
    // The delivered email's job again, as SQS leaves it after maxReceiveCount failed
    // receives: redriving it must send nothing twice (the email is no longer queued).
    const job = JSON.stringify({ v: 1, org: ORG, kind: 'email.send', ids: [lastEmail] });
    const reply = await fetch(`${BASE}/local/queues/EmailSendDLQ`, { method: 'POST', body: job });
    assert.equal(reply.status, 200, await reply.text());
  });

  step("an admin sees the organization's charts, rates and latest failures", async () => {
    await page.goto(`${BASE}/admin/dashboard.html`);
    assert.equal(await page.title(), 'Herald dashboard');
    await useToken(admin);
    // Analytics are written behind the events queue: refresh until the sends are in.
    await eventually(async () => {
      await page.getByTestId('refresh').click();
      await page.waitForFunction(() => document.body.dataset.loaded === 'true');
      const email = page.getByTestId('chart-email');
      assert.match(await email.getByTestId('legend-delivered').innerText(), /delivered 3/);
      assert.match(await email.getByTestId('legend-bounced').innerText(), /bounced 1/);
      assert.match(await page.getByTestId('chart-sms').getByTestId('legend-failed').innerText(), /failed 1/);
    });
    assert.ok(await page.getByTestId('chart-email').locator('rect[data-status="delivered"]').count() >= 1, 'bars drawn');
    assert.match(await text('rate-email-bounce'), /25\.0 %/);
    assert.match(await text('rate-email-delivery'), /75\.0 %/);
    const failure = page.getByTestId('failure-row');
    assert.equal(await failure.count(), 1);
    assert.match(await failure.innerText(), /sms.*\+14155552672/s);
    assert.equal(await page.getByTestId('dead-letters').isHidden(), true, 'DLQs are for platform superusers only');
  });

  step('an admin looks up the bounced address in the consent ledger', async () => {
    await page.getByTestId('consent-subject').fill('nobody@example.com');
    await page.getByTestId('consent-lookup').click();
    await eventually(async () => assert.equal(await page.getByTestId('consent-empty').isVisible(), true));
    // The bounce reached the ledger through the signed SendGrid webhook (issue 19); the
    // screenshot below shows its row.
    await eventually(async () => {
      await page.getByTestId('consent-subject').fill('gone@bounce.test');
      await page.getByTestId('consent-lookup').click();
      await page.waitForFunction(() => document.body.dataset.consent === 'loaded');
      const row = page.getByTestId('consent-row');
      assert.equal(await row.count(), 1);
      assert.match(await row.innerText(), /all\s+opted_out\s+bounce\s+sendgrid\s+email_id: \S+, sg_event_id: /);
    });
  });

  step('a superuser sees the DLQ, and the screenshot shows it all', async () => {
    await useToken(superuser, ORG);
    await eventually(async () => {
      assert.equal(await page.getByTestId('dead-letters').isVisible(), true);
      assert.equal(await text('depth-email-send'), '1');
    });
    assert.match(await page.getByTestId('dlq-email-send').innerText(), new RegExp(`email\\.send · ${ORG}`));
    assert.match(await page.getByTestId('chart-email').getByTestId('legend-delivered').innerText(), /delivered 3/);
    await page.screenshot({ path: path.join(SHOTS, 'dashboard.png'), fullPage: true });
  });

  step('the superuser redrives the DLQ and it empties; the email is not sent twice', async () => {
    await page.getByTestId('redrive-email-send').click();
    await eventually(async () => assert.match(await text('notice'), /Redriving email-send/));
    await eventually(async () => {
      await page.getByTestId('refresh').click();
      await page.waitForFunction(() => document.body.dataset.loaded === 'true');
      assert.equal(await text('depth-email-send'), '0');
    });
    const email = await apiCall('GET', `/services/email/${lastEmail}/`, admin);
    assert.equal(email.body.status, 'delivered');
    const audit = await apiCall('GET', '/services/audit-logs/?action=dead_letters.redrive', superuser);
    assert.ok(audit.body.items.some((entry) => entry.resource === 'dead-letters/email-send'));
    assert.deepEqual(browserErrors, []);
  });
});
