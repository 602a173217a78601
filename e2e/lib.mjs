// What both browser tests share: the bundle under test, its token and API calls, waiting,
// the Chromium they drive, and ordered steps that stop after the first failure.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const BASE = (process.env.HERALD_URL || '').replace(/\/$/, '');
export const SHOTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function token(org, role) {
  const reply = await fetch(`${BASE}/local/token?org=${org}&role=${role}`);
  assert.equal(reply.status, 200, 'the local runner mints tokens');
  return (await reply.text()).trim();
}

export async function apiCall(method, url, bearer, body) {
  const reply = await fetch(`${BASE}${url}`, {
    method,
    headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await reply.text();
  return { status: reply.status, body: text ? JSON.parse(text) : null };
}

// Retries an assertion until it holds or time runs out (playwright-core has no `expect`).
export async function eventually(check, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

// Headless Chromium with a profile of its own. No sandbox: the tests run as root. The rest
// keeps Chromium off the network (this machine has none) and quiet: only the bundle on
// loopback is contacted. `close()` also removes the profile.
export async function launchBrowser(name) {
  assert.ok(BASE, 'set HERALD_URL to the running bundle, e.g. http://127.0.0.1:3000');
  fs.mkdirSync(SHOTS, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `herald-e2e-${name}-`));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    context,
    async close() {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

// Steps build on the ones before them, so after a failure the rest are skipped rather than
// failing one timeout at a time; the failing step leaves `failureShot` to look at.
export function stepper(failureShot, currentPage) {
  let failedStep = null;
  return function step(name, fn) {
    it(name, async (t) => {
      if (failedStep) {
        t.skip(`skipped: "${failedStep}" failed`);
        return;
      }
      try {
        await fn();
      } catch (error) {
        failedStep = name;
        const page = currentPage();
        if (page) await page.screenshot({ path: path.join(SHOTS, failureShot), fullPage: true }).catch(() => {});
        throw error;
      }
    });
  };
}
