// End-to-end test of the demo web app in Debian's Chromium (headless, playwright-core, no
// browser download). Run by scripts/test-web.sh, which starts the bundle and passes:
//   BASE_URL      the local runtime serving web/app (e.g. http://127.0.0.1:3100)
//   SANDBOX_URL   the sandbox bank
//   CHROMIUM_PATH /usr/bin/chromium
//   ARTIFACTS     where screenshots go
//
// The scenario: sign in → connect two banks, approving at the sandbox bank's SCA page →
// the dashboard's total equals what GET /v1/balances answers for the same user (and that
// answer's total equals the sum of its converted balances), in EUR and in USD → a bank
// that fails is named while the other's data still shows → a connection denied at the
// bank shows the denial → a validation error is shown next to its field → a payment
// authorised at the bank reaches ACSC on screen → a 50-row CSV upload reaches 100 % →
// the inbox lists what happened → renew and revoke from the connections list.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE_URL = required('BASE_URL').replace(/\/$/, '');
const SANDBOX_URL = required('SANDBOX_URL').replace(/\/$/, '');
const ARTIFACTS = process.env.ARTIFACTS || path.resolve('e2e/artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const USER = `e2e-${Date.now().toString(36)}`;
const BULK_ROWS = 50;
const CREDITORS = ['DE89370400440532013000', 'GB29NWBK60161331926819', 'LT121000011101001000'];

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`demo.e2e: ${name} is not set (run scripts/test-web.sh)`);
    process.exit(2);
  }
  return value;
}

const started = Date.now();
const timings = [];
async function step(name, body) {
  const t0 = Date.now();
  process.stderr.write(`demo.e2e: ${name} …\n`);
  await body();
  const ms = Date.now() - t0;
  timings.push([name, ms]);
  process.stderr.write(`demo.e2e: ${name} ok (${(ms / 1000).toFixed(1)} s)\n`);
}

// The test's own view of the API, as the same user (a token of its own).
let apiToken;
async function api(method, pathname, body) {
  const response = await fetch(`${BASE_URL}${pathname}`, {
    method,
    headers: { authorization: `Bearer ${apiToken}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${pathname}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** "1,234.50 EUR" → minor units as a BigInt, from the decimal string (no floats). */
function minorUnits(amount, digits = 2) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(amount).replace(/,/g, ''));
  assert.ok(m, `not a decimal amount: ${amount}`);
  const fraction = (m[3] || '').padEnd(digits, '0');
  assert.equal(fraction.length, digits, `more than ${digits} fraction digits: ${amount}`);
  const value = BigInt(m[2]) * 10n ** BigInt(digits) + BigInt(fraction || '0');
  return m[1] ? -value : value;
}

/**
 * Chromium, started again (with a fresh profile) if it dies while starting: a CI run saw
 * it crash with SIGSEGV at launch once, before any page was open. A failure after the
 * launch is the test's and is never retried.
 */
async function launchBrowser(attempts = 3) {
  for (let attempt = 1; ; attempt += 1) {
    const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'demo-e2e-chromium-'));
    try {
      const context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM,
        headless: true,
        viewport: { width: 1280, height: 900 },
        args: [
          '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
        ],
      });
      return { context, userDataDir };
    } catch (error) {
      fs.rmSync(userDataDir, { recursive: true, force: true });
      if (attempt >= attempts) throw error;
      console.log(`demo.e2e: chromium did not start (attempt ${attempt}): ${String(error).split('\n')[0]}`);
    }
  }
}

const { context, userDataDir } = await launchBrowser();
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(20_000);
const consoleLines = [];
const pageErrors = [];
page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
page.on('pageerror', (error) => pageErrors.push(String(error)));
page.on('dialog', (dialog) => dialog.accept());

async function shot(name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function tab(name) {
  await page.click(`.tabs a[data-tab="${name}"]`);
  await page.waitForSelector(`#tab-${name}:not([hidden])`);
}

/** At the sandbox bank's SCA page: click Approve or Deny; back in the app afterwards. */
async function atTheBank(decision) {
  await page.waitForURL((url) => url.href.startsWith(SANDBOX_URL), { timeout: 20_000 });
  assert.match(page.url(), /\/sca\/(consents|payments)\//);
  await page.click(`button[value="${decision}"]`);
  await page.waitForURL((url) => url.href.startsWith(BASE_URL), { timeout: 20_000 });
}

async function connectBank(bankId, decision) {
  await tab('connect');
  await page.click(`[data-connect="${bankId}"]`);
  await atTheBank(decision);
  await page.waitForSelector('#main:not([hidden])');
}

let failed = false;
try {
  await step('sign in as a demo user', async () => {
    await page.goto(`${BASE_URL}/`);
    await page.waitForSelector('#signin:not([hidden])');
    await page.fill('#signin-form input[name="user"]', 'not a name!');
    await page.click('#signin-button');
    const error = page.locator('#signin-form .field-error[data-field="user"]');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /letters, digits/);
    await page.fill('#signin-form input[name="user"]', USER);
    await page.click('#signin-button');
    await page.waitForSelector('#main:not([hidden])');
    assert.equal(await page.textContent('#who-name'), USER);
    const signed = await (await fetch(`${BASE_URL}/__local/token`, { method: 'POST', body: JSON.stringify({ user: USER }) })).json();
    apiToken = signed.token;
  });

  await step('list the sandbox banks', async () => {
    await tab('connect');
    const banks = (await (await fetch(`${BASE_URL}/v1/banks`)).json()).banks;
    assert.ok(banks.length >= 3);
    for (const bank of banks) {
      await page.waitForSelector(`.bank[data-bank="${bank.id}"]`);
      assert.match(await page.textContent(`.bank[data-bank="${bank.id}"]`), new RegExp(bank.name));
    }
  });

  await step('connect lt-alpha: approve at the bank', async () => {
    await tab('connect');
    await page.click('[data-connect="lt-alpha"]');
    await page.waitForURL((url) => url.href.startsWith(SANDBOX_URL));
    await shot('sca-consent');
    await page.click('button[value="approve"]');
    await page.waitForURL((url) => url.href.startsWith(BASE_URL));
    await page.waitForSelector('#flash[data-kind="success"]');
    assert.match(await page.textContent('#flash'), /Alpha Bankas is connected/);
    assert.equal(new URL(page.url()).search, '', 'the outcome is read from the query and then cleared');
  });

  await step('connect lv-baltija: approve at the bank', async () => {
    await connectBank('lv-baltija', 'approve');
    await page.waitForSelector('#flash[data-kind="success"]');
    assert.match(await page.textContent('#flash'), /Baltija Banka is connected/);
  });

  await step('the dashboard shows the right total and the accounts of both banks', async () => {
    await tab('dashboard');
    await page.waitForSelector('.bank-block[data-bank="lt-alpha"]');
    await page.waitForSelector('.bank-block[data-bank="lv-baltija"]');
    await page.waitForSelector('#transactions tr[data-category]');
    await page.waitForSelector('#spending-chart svg g[data-category]');

    // What the API says for this user, computed here on its own.
    const balances = await api('GET', '/v1/balances?baseCurrency=EUR');
    assert.equal(balances.errors.length, 0, JSON.stringify(balances.errors));
    assert.equal(balances.total.complete, true);
    const banks = new Set(balances.accounts.map((a) => a.bankId));
    assert.deepEqual([...banks].sort(), ['lt-alpha', 'lv-baltija']);
    const sum = balances.accounts.reduce((acc, a) => acc + minorUnits(a.converted.amount.amount), 0n);
    assert.equal(sum, minorUnits(balances.total.amount.amount), 'the total is the sum of the converted balances');

    const shown = (await page.textContent('#total')).trim();
    assert.match(shown, /EUR$/);
    assert.equal(minorUnits(shown.replace(/\s*EUR$/, '')), sum, `screen ${shown} vs API ${balances.total.amount.amount}`);
    assert.equal(await page.getAttribute('#total', 'data-amount'), balances.total.amount.amount);

    // Every account with its bank, the rates with their date, both banks' data age.
    assert.equal(await page.locator('#accounts tr[data-account]').count(), balances.accounts.length);
    for (const [currency, rate] of Object.entries(balances.rates).filter(([c]) => c !== 'EUR')) {
      assert.equal((await page.textContent(`#rates tr[data-currency="${currency}"] td.num`)).trim(), rate);
    }
    assert.ok(Object.keys(balances.rates).some((c) => c !== 'EUR'), 'the USD and GBP accounts need rates');
    assert.match(await page.textContent('#rates-date'), new RegExp(balances.total.ratesAsOf));
    assert.equal(await page.locator('#sources li[data-bank]').count(), 2);
    assert.match(await page.textContent('#sources'), /old/);

    // The chart has one bar per spending category of the API.
    const spending = await api('GET', '/v1/insights/spending?baseCurrency=EUR');
    const categories = spending.spending.filter((s) => Number(s.total.amount) !== 0).length;
    assert.equal(await page.locator('#spending-chart svg g[data-category]').count(), categories);
    assert.doesNotMatch(await page.textContent('#tab-dashboard'), /\b(null|undefined|NaN)\b/);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png') });
    await shot('dashboard-full');
  });

  await step('another base currency: the total follows', async () => {
    await page.selectOption('#base-currency', 'USD');
    await page.waitForFunction(() => document.querySelector('#total').dataset.currency === 'USD');
    const usd = await api('GET', '/v1/balances?baseCurrency=USD');
    const shown = (await page.textContent('#total')).trim();
    assert.equal(minorUnits(shown.replace(/\s*USD$/, '')), minorUnits(usd.total.amount.amount), `screen ${shown} vs API ${usd.total.amount.amount}`);
    await page.selectOption('#base-currency', 'EUR');
    await page.waitForFunction(() => document.querySelector('#total').dataset.currency === 'EUR');
  });

  await step('a bank that fails is named on the dashboard, the other bank still shows', async () => {
    const faults = (body) => fetch(`${SANDBOX_URL}/__admin/faults`, body
      ? { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }
      : { method: 'DELETE' });
    assert.ok((await faults({ bank: 'lv-baltija', errorRate: 1.0, errorStatus: 503 })).ok);
    try {
      await page.click('#refresh');
      await page.waitForSelector('#bank-errors li[data-bank="lv-baltija"]', { timeout: 60_000 });
      assert.match(await page.textContent('#bank-errors'), /Baltija Banka/);
      assert.equal(await page.locator('#bank-errors li[data-bank="lt-alpha"]').count(), 0);
      await page.waitForSelector('.bank-block[data-bank="lt-alpha"]');
      await shot('dashboard-bank-error');
    } finally {
      assert.ok((await faults(null)).ok);
    }
    await page.click('#refresh');
    await page.waitForFunction(() => !document.querySelector('#bank-errors li'), null, { timeout: 60_000 });
  });

  await step('filter transactions by bank and category', async () => {
    await page.selectOption('#tx-filters select[name="bankId"]', 'lv-baltija');
    const category = await page.locator('#spending-chart svg g[data-category]').first().getAttribute('data-category');
    await page.selectOption('#tx-filters select[name="category"]', category);
    const before = await page.locator('#transactions tr[data-category]').count();
    await page.click('#tx-filters button[type="submit"]');
    await page.waitForFunction(
      (c) => {
        const rows = [...document.querySelectorAll('#transactions tr[data-category]')];
        return rows.length > 0 && rows.every((r) => r.dataset.category === c);
      },
      category,
    );
    const rows = page.locator('#transactions tr[data-category]');
    for (const text of await rows.allTextContents()) assert.match(text, /Baltija Banka/);
    const expected = await api('GET', `/v1/transactions?limit=50&bankId=lv-baltija&category=${category}`);
    assert.equal(await rows.count(), expected.transactions.length);
    assert.ok(before >= (await rows.count()));
    await shot('transactions-filtered');
  });

  await step('connect ee-pohja: deny at the bank → the denial is shown', async () => {
    await connectBank('ee-pohja', 'deny');
    await page.waitForSelector('#flash[data-kind="error"]');
    assert.match(await page.textContent('#flash'), /Põhja Pank was denied at the bank/);
    const connections = (await api('GET', '/v1/connections')).connections;
    const denied = connections.filter((c) => c.bankId === 'ee-pohja');
    assert.equal(denied.length, 1);
    assert.equal(denied[0].status, 'rejected');
    await shot('connect-denied');
  });

  await step('a bad payment shows the API error next to its field', async () => {
    await tab('pay');
    await page.fill('#pay-form input[name="creditorIban"]', 'LT000000000000000000');
    await page.click('#pay-button');
    const error = page.locator('#pay-form .field-error[data-field="creditorAccount.iban"]');
    await error.waitFor({ state: 'visible' });
    assert.ok((await error.textContent()).length > 3);
    assert.equal(await page.getAttribute('#pay-form input[name="creditorIban"]', 'aria-invalid'), 'true');
    assert.ok(page.url().startsWith(BASE_URL), 'no trip to the bank');
    await shot('payment-field-error');
  });

  await step('a payment authorised at the bank reaches ACSC on screen', async () => {
    await page.fill('#pay-form input[name="creditorIban"]', 'DE89370400440532013000');
    await page.fill('#pay-form input[name="amount"]', '23.45');
    await page.click('#pay-button');
    await page.waitForURL((url) => url.href.startsWith(SANDBOX_URL));
    await shot('sca-payment');
    await page.click('button[value="approve"]');
    await page.waitForURL((url) => url.href.startsWith(BASE_URL));
    await page.waitForSelector('#tab-pay:not([hidden])');
    await page.waitForSelector('#payment-status .status-code[data-status="ACSC"][data-final="true"]', { timeout: 60_000 });
    const history = await page.locator('#payment-status .timeline li').evaluateAll((items) => items.map((i) => i.dataset.status));
    assert.equal(history.at(-1), 'ACSC');
    assert.ok(history.includes('ACTC'), history.join(','));
    const paymentId = await page.evaluate(() => sessionStorage.getItem('ob.payment'));
    const payment = await api('GET', `/v1/payments/${paymentId}`);
    assert.equal(payment.status, 'ACSC');
    assert.equal(payment.final, true);
    assert.equal(payment.instructedAmount.amount, '23.45');
    assert.doesNotMatch(await page.textContent('#payment-status'), /\b(null|undefined|NaN)\b/);
    await shot('payment-acsc');
  });

  await step(`a ${BULK_ROWS}-row CSV upload reaches 100 %`, async () => {
    const rows = ['creditorName,creditorIban,amount,currency,reference'];
    for (let i = 0; i < BULK_ROWS; i += 1) {
      rows.push(`"Darbuotojas ${i}, UAB",${CREDITORS[i % CREDITORS.length]},${10 + i}.${String(i % 100).padStart(2, '0')},EUR,Atlyginimas ${i}`);
    }
    const csv = path.join(ARTIFACTS, 'payroll.csv');
    fs.writeFileSync(csv, `${rows.join('\n')}\n`);

    await tab('bulk');
    // A bad row first: the API's item error is shown against the CSV line.
    const bad = path.join(ARTIFACTS, 'payroll-bad.csv');
    fs.writeFileSync(bad, `${rows.slice(0, 3).join('\n')}\nBad Row,LT601010012345678900,5.00,EUR,x\n`);
    await page.setInputFiles('#bulk-form input[name="file"]', bad);
    await page.click('#bulk-button');
    await page.waitForSelector('#bulk-row-errors li');
    assert.match(await page.textContent('#bulk-row-errors'), /Line 4: creditorAccount\.iban/);

    await page.setInputFiles('#bulk-form input[name="file"]', csv);
    const t0 = Date.now();
    await page.click('#bulk-button');
    await page.waitForSelector('#bulk-status[data-batch-id]');
    const batchId = await page.getAttribute('#bulk-status', 'data-batch-id');

    // The first item is authorised in the browser from the app's link; the PSU's other
    // approvals are scripted at the sandbox bank, and the bank's redirect to our callback
    // is followed as the browser would.
    const first = page.locator('[data-authorise-next]');
    await first.waitFor({ state: 'visible', timeout: 60_000 });
    await first.click();
    await atTheBank('approve');
    await page.waitForSelector('#tab-bulk:not([hidden])');

    const decided = new Set();
    let percent = 0;
    let lastReport = Date.now();
    while (percent < 100) {
      assert.ok(Date.now() - t0 < 180_000, `the batch stalled at ${percent} %`);
      const batch = await api('GET', `/v1/payment-batches/${batchId}?limit=1000`);
      assert.equal(batch.total, BULK_ROWS);
      const ready = batch.items.filter((item) => item.state === 'awaiting_authorisation' && item.authUrl && !decided.has(item.paymentId));
      await Promise.all(ready.map(async (item) => {
        decided.add(item.paymentId);
        const url = new URL(item.authUrl);
        const [, bank, , kind, id] = url.pathname.split('/');
        const answer = await fetch(`${SANDBOX_URL}/__admin/sca/${bank}/${kind}/${id}?decision=approve`, { method: 'POST' });
        if (answer.status === 409) return; // already decided (the one approved in the browser)
        const text = await answer.text();
        assert.equal(answer.status, 200, text);
        const back = await fetch(JSON.parse(text).redirect, { redirect: 'manual' });
        assert.equal(back.status, 302, `our callback answers 302, got ${back.status}`);
      }));
      percent = Number(await page.getAttribute('[data-testid="bulk-percent"]', 'data-percent'));
      if (Date.now() - lastReport > 10_000) {
        lastReport = Date.now();
        process.stderr.write(`demo.e2e:   ${percent} % on screen after ${((Date.now() - t0) / 1000).toFixed(0)} s; ${JSON.stringify(batch.counts)}\n`);
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    await page.waitForSelector('#bulk-status .progress[aria-valuenow="100"]');
    assert.match(await page.textContent('#bulk-status'), new RegExp(`${BULK_ROWS} of ${BULK_ROWS} final, done`));
    const batch = await api('GET', `/v1/payment-batches/${batchId}?limit=1000`);
    assert.equal(batch.done, true);
    assert.equal(batch.counts.completed, BULK_ROWS, JSON.stringify(batch.counts));
    process.stderr.write(`demo.e2e: batch of ${BULK_ROWS} final after ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    assert.doesNotMatch(await page.textContent('#bulk-status'), /\b(null|undefined|NaN)\b/);
    await shot('bulk-100');
  });

  await step('the inbox lists the connections and payments', async () => {
    await tab('inbox');
    await page.waitForSelector('#notifications li[data-kind]');
    const kinds = await page.locator('#notifications li[data-kind]').evaluateAll((items) => items.map((i) => i.dataset.kind));
    const expected = (await api('GET', '/v1/notifications')).notifications.map((n) => n.kind);
    assert.deepEqual(kinds, expected);
    assert.ok(kinds.length >= 3, kinds.join(','));
    await shot('inbox');
  });

  await step('connections: days left, renew at the bank, revoke', async () => {
    await tab('connections');
    const alpha = (await api('GET', '/v1/connections')).connections.find((c) => c.bankId === 'lt-alpha' && c.status === 'valid');
    const row = `#connections tr[data-connection="${alpha.connectionId}"]`;
    await page.waitForSelector(row);
    assert.equal((await page.textContent(`${row} td.num`)).trim(), String(alpha.daysLeft));
    await shot('connections');

    // The renewal's SCA runs in a window of its own (the renew route takes no redirectUrl).
    const [bankWindow] = await Promise.all([context.waitForEvent('page'), page.click(`${row} [data-renew]`)]);
    await bankWindow.waitForURL((url) => url.href.startsWith(SANDBOX_URL));
    await bankWindow.click('button[value="approve"]');
    await bankWindow.waitForURL((url) => url.href.startsWith(`${BASE_URL}/v1/callbacks/sca`));
    await bankWindow.close();
    await page.waitForSelector('#flash[data-kind="success"]');
    assert.match(await page.textContent('#flash'), /Alpha Bankas is renewed/);
    const after = (await api('GET', '/v1/connections')).connections;
    assert.ok(after.some((c) => c.bankId === 'lt-alpha' && c.status === 'valid' && c.connectionId !== alpha.connectionId), 'the renewal is valid');

    await tab('connections');
    const baltija = after.find((c) => c.bankId === 'lv-baltija' && c.status === 'valid');
    await page.click(`#connections tr[data-connection="${baltija.connectionId}"] [data-revoke]`);
    await page.waitForSelector(`#connections tr[data-connection="${baltija.connectionId}"]:not([data-status="valid"])`);
    const revoked = (await api('GET', `/v1/connections/${baltija.connectionId}`));
    assert.notEqual(revoked.status, 'valid');
    await shot('connections-after');
  });

  assert.deepEqual(pageErrors, [], 'no script errors in the page');
  const leaked = consoleLines.filter((line) => line.includes(apiToken.split('.')[1].slice(0, 24)) || /eyJ[\w-]{10,}\./.test(line));
  assert.deepEqual(leaked, [], 'no token in the console');
} catch (error) {
  failed = true;
  console.error(`demo.e2e: FAILED: ${error.stack || error}`);
  await shot('failure').catch(() => {});
  fs.writeFileSync(path.join(ARTIFACTS, 'console.log'), consoleLines.join('\n'));
} finally {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

for (const [name, ms] of timings) process.stderr.write(`  ${(ms / 1000).toFixed(1).padStart(6)} s  ${name}\n`);
process.stderr.write(`demo.e2e: ${failed ? 'FAILED' : 'passed'} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
process.exit(failed ? 1 : 0);
