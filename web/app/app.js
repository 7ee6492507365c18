// The demo web app: plain JavaScript (an ES module, no build step) that talks only to the
// public API (docs/openapi.yaml) of the origin that serves it, plus the local runtime's
// POST /__local/token to sign in as a demo user. The token lives in sessionStorage and is
// never logged or shown.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const FINAL_BATCH_STATES = ['completed', 'rejected', 'failed', 'unknown'];
const POLL_MS = 1000;
const KEY = { token: 'ob.token', user: 'ob.user', payment: 'ob.payment', batch: 'ob.batch', seen: 'ob.inboxSeen' };

const state = {
  banks: [],
  connections: [],
  txCursor: null,
  paymentTimer: null,
  batchTimer: null,
  renewalTimer: null,
  refreshNext: false,
};

// ---------------------------------------------------------------------------------------
// Helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces `node`'s children, leaving out null, undefined and false. */
function put(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** "12345.6" → "12,345.6": thousands separators on the decimal string itself (no float). */
function groupDigits(amount) {
  const text = String(amount);
  const negative = text.startsWith('-');
  const [whole, fraction] = text.replace(/^[-+]/, '').split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${negative ? '-' : ''}${grouped}${fraction !== undefined ? `.${fraction}` : ''}`;
}

function money(m) {
  if (!m || m.amount === undefined) return '–';
  return `${groupDigits(m.amount)} ${m.currency}`;
}

function age(seconds) {
  if (seconds === undefined || seconds === null) return 'age unknown';
  if (seconds < 60) return `${seconds} s old`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min old`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h old`;
  return `${Math.round(seconds / 86400)} days old`;
}

/** A rate for reading: six significant digits ("0.923446301595…" → "0.923446"). */
function shortRate(rate) {
  const n = Number(rate);
  return Number.isFinite(n) ? String(Number(n.toPrecision(6))) : String(rate);
}

function when(timestamp) {
  if (!timestamp) return '';
  const d = new Date(timestamp);
  return Number.isNaN(d.getTime()) ? timestamp : d.toLocaleString();
}

function label(text) {
  return String(text ?? '').replace(/_/g, ' ');
}

function bankName(bankId) {
  return state.banks.find((b) => b.id === bankId)?.name ?? bankId;
}

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function flash(message, kind = 'info') {
  const box = $('#flash');
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.dataset.kind = kind;
  box.hidden = false;
}

function clearFlash() {
  $('#flash').hidden = true;
}

// ---------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || problem?.message || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

async function api(method, path, { body, headers = {}, auth = true } = {}) {
  const init = { method, headers: { accept: 'application/json, application/problem+json', ...headers } };
  const token = sessionStorage.getItem(KEY.token);
  if (auth && token) init.headers.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: 'The API cannot be reached. Is the local runtime running?' });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (response.status === 401 && auth) {
    signOut('Your session has ended: sign in again.');
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Puts each `errors[].field` message next to its field in `form`; the rest goes to the
 * form's general error line. Returns the errors that had no place. */
function showProblem(form, error, { fieldMap = (f) => f } = {}) {
  clearErrors(form);
  const leftover = [];
  for (const item of error.fieldErrors) {
    const field = fieldMap(item.field);
    const slot = field === null ? null : $(`.field-error[data-field="${CSS.escape(field)}"]`, form);
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${item.message}` : item.message;
      slot.hidden = false;
      const input = slot.previousElementSibling?.querySelector?.('input,select');
      input?.setAttribute('aria-invalid', 'true');
    } else {
      leftover.push(item);
    }
  }
  const general = $('.form-error', form);
  if (general && (leftover.length || !error.fieldErrors.length)) {
    const parts = leftover.map((e) => (e.field ? `${e.field}: ${e.message}` : e.message));
    general.textContent = error.fieldErrors.length ? parts.join('; ') : error.message;
    general.hidden = false;
  } else if (!general && !error.fieldErrors.length) {
    flash(error.message, 'error');
  }
  return leftover;
}

function clearErrors(root) {
  for (const slot of $$('.field-error, .form-error', root)) {
    slot.textContent = '';
    slot.hidden = true;
  }
  for (const input of $$('[aria-invalid]', root)) input.removeAttribute('aria-invalid');
}

// ---------------------------------------------------------------------------------------
// Sign in

async function signIn(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const user = form.user.value.trim();
  try {
    const answer = await api('POST', '/__local/token', { body: { user }, auth: false });
    sessionStorage.setItem(KEY.token, answer.token);
    sessionStorage.setItem(KEY.user, answer.user);
    clearFlash();
    showApp();
  } catch (error) {
    showProblem(form, error);
  }
}

function signOut(message) {
  for (const key of [KEY.token, KEY.user, KEY.payment, KEY.batch]) sessionStorage.removeItem(key);
  clearInterval(state.paymentTimer);
  clearInterval(state.batchTimer);
  $('#main').hidden = true;
  $('#who').hidden = true;
  $('#signin').hidden = false;
  if (message) flash(message, 'info');
}

// ---------------------------------------------------------------------------------------
// Navigation

const loaders = {
  dashboard: loadDashboard,
  connect: loadBanks,
  connections: loadConnections,
  pay: loadPay,
  bulk: loadBulk,
  inbox: loadInbox,
};

function currentTab() {
  const name = location.hash.replace('#', '');
  return loaders[name] ? name : 'dashboard';
}

function route() {
  if (!sessionStorage.getItem(KEY.token)) return;
  const tab = currentTab();
  for (const section of $$('.tab')) section.hidden = section.id !== `tab-${tab}`;
  for (const link of $$('.tabs a')) link.classList.toggle('active', link.dataset.tab === tab);
  loaders[tab]().catch((error) => {
    if (error.status !== 401) flash(error.message, 'error');
  });
}

async function showApp() {
  $('#signin').hidden = true;
  $('#main').hidden = false;
  $('#who').hidden = false;
  $('#who-name').textContent = sessionStorage.getItem(KEY.user) || '';
  await ensureBanks();
  route();
  refreshInboxBadge();
}

async function ensureBanks() {
  if (state.banks.length) return;
  try {
    const answer = await api('GET', '/v1/banks', { auth: false });
    state.banks = answer.banks || [];
  } catch (error) {
    flash(`The bank list could not be loaded: ${error.message}`, 'error');
  }
  for (const select of $$('select[name="bankId"]')) {
    if (select.closest('#tx-filters')) {
      for (const bank of state.banks) select.append(el('option', { value: bank.id, text: bank.name }));
    } else {
      select.replaceChildren(...state.banks.map((bank) => el('option', { value: bank.id, text: `${bank.name} (${bank.country})` })));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Coming back from the bank (our SCA callback sends the browser to `/?status=…&…`)

async function handleReturn() {
  const params = new URLSearchParams(location.search);
  const status = params.get('status');
  if (!status) return;
  const connectionId = params.get('connectionId');
  const paymentId = params.get('paymentId');
  history.replaceState(null, '', location.pathname + location.hash);
  if (connectionId) {
    let bank = '';
    try {
      const connection = await api('GET', `/v1/connections/${encodeURIComponent(connectionId)}`);
      bank = bankName(connection.bankId);
    } catch {
      // The outcome is still shown.
    }
    if (status === 'valid') {
      flash(`${bank || 'The bank'} is connected: access approved at the bank.`, 'success');
      location.hash = '#dashboard';
    } else if (status === 'rejected') {
      flash(`The connection to ${bank || 'the bank'} was denied at the bank. Nothing was shared.`, 'error');
      location.hash = '#connect';
    } else {
      flash(`The connection to ${bank || 'the bank'} is ${label(status)}.`, 'info');
      location.hash = '#connections';
    }
  } else if (paymentId) {
    const batch = JSON.parse(sessionStorage.getItem(KEY.batch) || 'null');
    if (batch && batch.items?.includes(paymentId)) {
      flash(`Batch payment ${label(status)} at the bank.`, status === 'rejected' ? 'error' : 'info');
      location.hash = '#bulk';
    } else {
      sessionStorage.setItem(KEY.payment, paymentId);
      if (status === 'rejected') flash('The payment was not authorised at the bank.', 'error');
      else flash('Back from the bank: following the payment to its final status.', 'info');
      location.hash = '#pay';
    }
  }
}

// ---------------------------------------------------------------------------------------
// Dashboard

async function loadDashboard() {
  const base = $('#base-currency').value;
  const refresh = state.refreshNext ? '&refresh=true' : '';
  state.refreshNext = false;
  const [balances, spending, connections] = await Promise.all([
    api('GET', `/v1/balances?baseCurrency=${encodeURIComponent(base)}${refresh}`),
    api('GET', `/v1/insights/spending?baseCurrency=${encodeURIComponent(base)}`),
    api('GET', '/v1/connections'),
  ]);
  state.connections = connections.connections || [];
  const linked = state.connections.some((c) => c.status === 'valid');
  $('#no-connections').hidden = linked;
  renderTotal(balances);
  renderRates(balances);
  renderSources(balances.sources, balances.errors);
  renderAccounts(balances);
  renderSpending(spending);
  await loadTransactions(false);
}

function renderTotal(balances) {
  const total = balances.total || {};
  const node = $('#total');
  node.textContent = money(total.amount);
  node.dataset.amount = total.amount?.amount ?? '';
  node.dataset.currency = total.amount?.currency ?? total.currency ?? '';
  const notes = [];
  if (total.ratesAsOf) notes.push(`ECB rates of ${total.ratesAsOf}`);
  if (total.complete === false) notes.push('incomplete: some balances are missing (see errors)');
  notes.push(`${balances.accounts.length} accounts`);
  $('#total-note').textContent = notes.join(' · ');
}

function renderRates(balances) {
  const table = $('#rates');
  const rows = Object.entries(balances.rates || {})
    .filter(([currency]) => currency !== 'EUR')
    .map(([currency, rate]) =>
      el('tr', { 'data-currency': currency }, el('td', { text: '1 EUR =' }), el('td', { class: 'num', text: rate }), el('td', { text: currency })));
  table.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'muted', text: 'No conversion needed.' }))]));
  $('#rates-date').textContent = balances.total?.ratesAsOf ? `as of ${balances.total.ratesAsOf}` : '';
}

function renderSources(sources = [], errors = []) {
  $('#sources').replaceChildren(...sources.map((s) =>
    el('li', { 'data-bank': s.bankId },
      el('strong', { text: s.bankName }), ' — ',
      s.fromSnapshot ? `snapshot, ${age(s.ageSeconds)}` : `fresh from the bank (${age(s.ageSeconds)})`)));
  if (!sources.length) $('#sources').append(el('li', { class: 'muted', text: 'No bank data yet.' }));
  $('#bank-errors').replaceChildren(...errors.map((e) =>
    el('li', { 'data-bank': e.bankId, 'data-code': e.code },
      el('strong', { text: bankName(e.bankId) }), `: ${e.message} (${e.code})`,
      e.retryAfter ? ` — try again in ${e.retryAfter} s` : '')));
}

function renderAccounts(balances) {
  const byBank = new Map();
  for (const account of balances.accounts || []) {
    if (!byBank.has(account.bankId)) byBank.set(account.bankId, { name: account.bankName, accounts: [] });
    byBank.get(account.bankId).accounts.push(account);
  }
  const blocks = [...byBank.entries()].map(([bankId, bank]) =>
    el('div', { class: 'bank-block', 'data-bank': bankId },
      el('h4', { text: bank.name }),
      el('table', { class: 'list' },
        el('tr', {}, el('th', { text: 'Account' }), el('th', { text: 'IBAN' }), el('th', { class: 'num', text: 'Balance' }),
          el('th', { class: 'num', text: `In ${balances.baseCurrency}` }), el('th', { text: 'Rate' })),
        bank.accounts.map((a) =>
          el('tr', { 'data-account': a.accountId },
            el('td', { text: a.name || a.product || a.cashAccountType || a.accountId }),
            el('td', { class: 'mono', text: a.iban || '' }),
            el('td', { class: 'num', text: money(a.balance) }),
            el('td', { class: 'num', text: a.converted ? money(a.converted.amount) : 'no rate' }),
            el('td', { class: 'muted small', text: a.converted && a.balance?.currency !== balances.baseCurrency ? `× ${shortRate(a.converted.rate)} (${a.converted.asOf})` : '' }))))));
  $('#accounts').replaceChildren(...(blocks.length ? blocks : [el('p', { class: 'muted', text: 'No accounts.' })]));
}

const PALETTE = ['#2563eb', '#16a34a', '#db2777', '#ea580c', '#7c3aed', '#0891b2', '#ca8a04', '#dc2626', '#4b5563', '#65a30d', '#9333ea', '#0d9488'];

function renderSpending(spending) {
  const items = (spending.spending || [])
    .map((s) => ({ category: s.category, count: s.count, value: Math.abs(Number(s.total?.amount ?? 0)), total: s.total }))
    .filter((s) => s.value > 0)
    .sort((a, b) => b.value - a.value);
  $('#spending-period').textContent = spending.dateFrom ? `${spending.dateFrom} – ${spending.dateTo}, in ${spending.baseCurrency}` : '';
  const chart = $('#spending-chart');
  if (!items.length) {
    chart.replaceChildren(el('p', { class: 'muted', text: 'No spending in this period.' }));
    return;
  }
  const max = Math.max(...items.map((i) => i.value));
  const rowHeight = 26;
  const width = 640;
  const labelWidth = 130;
  const valueWidth = 150;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${items.length * rowHeight + 4}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'Spending by category');
  items.forEach((item, i) => {
    const y = i * rowHeight + 2;
    const barWidth = Math.max(2, ((width - labelWidth - valueWidth) * item.value) / max);
    const g = document.createElementNS(ns, 'g');
    g.setAttribute('data-category', item.category);
    const name = document.createElementNS(ns, 'text');
    name.setAttribute('x', 0);
    name.setAttribute('y', y + 17);
    name.textContent = label(item.category);
    const bar = document.createElementNS(ns, 'rect');
    bar.setAttribute('x', labelWidth);
    bar.setAttribute('y', y + 4);
    bar.setAttribute('width', barWidth);
    bar.setAttribute('height', rowHeight - 8);
    bar.setAttribute('rx', 3);
    bar.setAttribute('fill', PALETTE[i % PALETTE.length]);
    const title = document.createElementNS(ns, 'title');
    title.textContent = `${label(item.category)}: ${money(item.total)} (${item.count} payments)`;
    bar.append(title);
    const value = document.createElementNS(ns, 'text');
    value.setAttribute('x', labelWidth + barWidth + 6);
    value.setAttribute('y', y + 17);
    value.setAttribute('class', 'value');
    value.textContent = money(item.total);
    g.append(name, bar, value);
    svg.append(g);
  });
  chart.replaceChildren(svg);
  // Offer the categories seen as transaction filters.
  const select = $('#tx-filters select[name="category"]');
  const known = new Set($$('option', select).map((o) => o.value));
  for (const s of [...(spending.spending || []), ...(spending.income || [])]) {
    if (!known.has(s.category)) {
      select.append(el('option', { value: s.category, text: label(s.category) }));
      known.add(s.category);
    }
  }
}

async function loadTransactions(more) {
  const form = $('#tx-filters');
  const query = new URLSearchParams({ limit: '50' });
  for (const name of ['dateFrom', 'dateTo', 'bankId', 'category']) {
    const value = form.elements[name].value;
    if (value) query.set(name, value);
  }
  if (more && state.txCursor) query.set('cursor', state.txCursor);
  clearErrors(form.parentElement);
  let page;
  try {
    page = await api('GET', `/v1/transactions?${query}`);
  } catch (error) {
    if (error.status === 400) {
      showProblem(form.parentElement, error);
      return;
    }
    throw error;
  }
  state.txCursor = page.nextCursor || null;
  const table = $('#transactions');
  const rows = (page.transactions || []).map((t) =>
    el('tr', { 'data-category': t.category, class: t.status === 'pending' ? 'pending' : '' },
      el('td', { text: t.bookingDate || t.valueDate || '' }),
      el('td', { text: bankName(t.bankId) }),
      el('td', {}, t.counterparty || '', el('div', { class: 'muted small', text: t.remittanceInformation || '' })),
      el('td', {}, el('span', { class: 'chip', text: label(t.category) }), t.status === 'pending' ? el('span', { class: 'muted small', text: ' pending' }) : ''),
      el('td', { class: `num ${String(t.amount?.amount).startsWith('-') ? 'debit' : 'credit'}`, text: money(t.amount) })));
  if (!more) {
    table.replaceChildren(el('tr', {}, ['Date', 'Bank', 'Counterparty', 'Category', 'Amount'].map((h, i) => el('th', { class: i === 4 ? 'num' : '', text: h }))));
    if (!rows.length) table.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'No transactions match.' })));
  }
  table.append(...rows);
  $('#tx-more').hidden = !state.txCursor;
  if (page.errors?.length) renderSources(page.sources, page.errors);
}

// ---------------------------------------------------------------------------------------
// Banks and connections

async function loadBanks() {
  await ensureBanks();
  const connections = (await api('GET', '/v1/connections')).connections || [];
  const box = $('#banks');
  box.replaceChildren(...state.banks.map((bank) => {
    const valid = connections.find((c) => c.bankId === bank.id && c.status === 'valid');
    return el('div', { class: 'bank', 'data-bank': bank.id },
      el('div', {}, el('strong', { text: bank.name }), el('span', { class: 'muted', text: ` ${bank.country}` })),
      el('div', { class: 'muted small', text: [
        bank.capabilities?.accountInformation ? 'accounts' : null,
        bank.capabilities?.paymentProducts?.length ? 'payments' : null,
        bank.capabilities?.bulkPayments ? 'bulk' : null,
        bank.capabilities?.maxConsentDays ? `up to ${bank.capabilities.maxConsentDays} days` : null,
      ].filter(Boolean).join(' · ') }),
      valid ? el('div', { class: 'ok small', text: `Connected · ${valid.daysLeft} days left` }) : null,
      el('button', { type: 'button', 'data-connect': bank.id, onclick: () => connect(bank.id) }, valid ? 'Connect again' : 'Connect'));
  }));
}

async function connect(bankId) {
  const section = $('#tab-connect');
  clearErrors(section);
  try {
    const created = await api('POST', '/v1/connections', {
      body: { bankId, redirectUrl: `${location.origin}/` },
    });
    if (created.authUrl) {
      flash(`Taking you to ${bankName(bankId)} to approve access…`, 'info');
      location.assign(created.authUrl);
    } else {
      flash(`${bankName(bankId)} is connected.`, 'success');
    }
  } catch (error) {
    showProblem(section, error);
  }
}

async function loadConnections() {
  const answer = await api('GET', '/v1/connections');
  state.connections = answer.connections || [];
  const table = $('#connections');
  const header = el('tr', {}, ['Bank', 'Status', 'Valid until', 'Days left', 'Renewal', 'Created', ''].map((h) => el('th', { text: h })));
  const rows = state.connections.map((c) =>
    el('tr', { 'data-connection': c.connectionId, 'data-status': c.status },
      el('td', { text: bankName(c.bankId) }),
      el('td', {}, el('span', { class: `status status-${c.status}`, text: label(c.status) })),
      el('td', { text: c.validUntil }),
      el('td', { class: 'num', text: ['valid', 'pending_authorization'].includes(c.status) ? String(c.daysLeft) : '–' }),
      el('td', { text: c.renewal?.state && c.renewal.state !== 'none' ? label(c.renewal.state) : '' }),
      el('td', { class: 'small', text: when(c.createdAt) }),
      el('td', { class: 'actions' },
        c.status === 'pending_authorization' && c.authUrl ? el('a', { href: c.authUrl, class: 'button secondary' }, 'Authorise') : null,
        c.status === 'valid' ? el('button', { type: 'button', class: 'secondary', 'data-renew': c.connectionId, onclick: () => renew(c) }, 'Renew') : null,
        ['valid', 'pending_authorization', 'partially_authorised'].includes(c.status)
          ? el('button', { type: 'button', class: 'danger', 'data-revoke': c.connectionId, onclick: () => revoke(c) }, 'Revoke') : null)));
  table.replaceChildren(header, ...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 7, class: 'muted', text: 'No connections yet.' }))]));
}

async function renew(connection) {
  try {
    const renewal = await api('POST', `/v1/connections/${connection.connectionId}/renew`);
    if (!renewal.authUrl) return;
    // A renewal carries no redirectUrl (the API takes none), so the bank's page and our
    // callback's "you can close this window" page run in a window of their own while this
    // list waits for the renewal to become valid.
    const opened = window.open(renewal.authUrl, '_blank');
    if (!opened) {
      location.assign(renewal.authUrl);
      return;
    }
    flash(`Approve the renewal at ${bankName(connection.bankId)} in the new window…`, 'info');
    waitForRenewal(connection, renewal.connectionId);
  } catch (error) {
    flash(`Renewal not started: ${error.message}`, 'error');
  }
}

function waitForRenewal(connection, renewalId) {
  clearInterval(state.renewalTimer);
  const until = Date.now() + 10 * 60 * 1000;
  state.renewalTimer = setInterval(async () => {
    try {
      const renewal = await api('GET', `/v1/connections/${encodeURIComponent(renewalId)}`);
      if (renewal.status === 'pending_authorization' && Date.now() < until) return;
      clearInterval(state.renewalTimer);
      if (renewal.status === 'valid') {
        flash(`The connection to ${bankName(connection.bankId)} is renewed: ${renewal.daysLeft} days left.`, 'success');
      } else {
        flash(`The renewal at ${bankName(connection.bankId)} is ${label(renewal.status)}.`, renewal.status === 'rejected' ? 'error' : 'info');
      }
      if (currentTab() === 'connections') await loadConnections();
    } catch (error) {
      clearInterval(state.renewalTimer);
      if (error.status !== 401) flash(error.message, 'error');
    }
  }, POLL_MS);
}

async function revoke(connection) {
  if (!confirm(`Revoke access to ${bankName(connection.bankId)}? Its data is removed here.`)) return;
  try {
    await api('DELETE', `/v1/connections/${connection.connectionId}`);
    flash(`Access to ${bankName(connection.bankId)} was revoked.`, 'success');
  } catch (error) {
    flash(`Not revoked: ${error.message}`, 'error');
  }
  await loadConnections();
}

// ---------------------------------------------------------------------------------------
// Single payments

async function loadPay() {
  await ensureBanks();
  const paymentId = sessionStorage.getItem(KEY.payment);
  if (paymentId) followPayment(paymentId);
  await loadPaymentList();
}

async function loadPaymentList() {
  const answer = await api('GET', '/v1/payments');
  const table = $('#payments');
  const rows = (answer.payments || []).slice(0, 20).map((p) =>
    el('tr', { 'data-payment': p.paymentId },
      el('td', { class: 'small', text: when(p.createdAt) }),
      el('td', { text: p.creditorName }),
      el('td', { class: 'mono small', text: p.creditorAccount?.iban || '' }),
      el('td', { class: 'num', text: money(p.instructedAmount) }),
      el('td', {}, el('span', { class: `status state-${p.state}`, text: `${label(p.state)}${p.status ? ` · ${p.status}` : ''}` }))));
  table.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'muted', text: 'No payments yet.' }))]));
}

async function pay(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const f = form.elements;
  const body = {
    bankId: f.bankId.value,
    debtorAccount: { iban: f.debtorIban.value.replace(/\s+/g, '') },
    instructedAmount: { amount: f.amount.value.trim(), currency: f.currency.value.trim().toUpperCase() },
    creditorAccount: { iban: f.creditorIban.value.replace(/\s+/g, '') },
    creditorName: f.creditorName.value.trim(),
    redirectUrl: `${location.origin}/`,
  };
  if (f.remittance.value.trim()) body.remittanceInformationUnstructured = f.remittance.value.trim();
  $('#pay-button').disabled = true;
  try {
    const created = await api('POST', '/v1/payments', { body, headers: { 'idempotency-key': newKey() } });
    sessionStorage.setItem(KEY.payment, created.paymentId);
    renderPayment({ ...created, statusHistory: [], final: false });
    if (created.authUrl) {
      flash(`Taking you to ${bankName(body.bankId)} to authorise the payment…`, 'info');
      location.assign(created.authUrl);
    } else {
      followPayment(created.paymentId);
    }
  } catch (error) {
    showProblem(form, error);
  } finally {
    $('#pay-button').disabled = false;
  }
}

function followPayment(paymentId) {
  clearInterval(state.paymentTimer);
  const tick = async () => {
    try {
      const payment = await api('GET', `/v1/payments/${encodeURIComponent(paymentId)}`);
      renderPayment(payment);
      if (payment.final) {
        clearInterval(state.paymentTimer);
        loadPaymentList().catch(() => {});
        refreshInboxBadge();
      }
    } catch (error) {
      clearInterval(state.paymentTimer);
      if (error.status === 404) sessionStorage.removeItem(KEY.payment);
      $('#payment-status').replaceChildren(el('p', { class: 'form-error', text: error.message }));
    }
  };
  tick();
  state.paymentTimer = setInterval(tick, POLL_MS);
}

const STATUS_WORDS = {
  RCVD: 'received by the bank, waiting for your authorisation',
  ACTC: 'authorised, technical checks passed',
  ACSP: 'accepted, settlement in progress',
  ACSC: 'settled on your account',
  ACCC: 'settled on the recipient\u2019s account',
  RJCT: 'rejected',
  CANC: 'cancelled',
  PDNG: 'pending',
};

function renderPayment(p) {
  const box = $('#payment-status');
  const steps = (p.statusHistory || []).map((h) =>
    el('li', { 'data-status': h.status }, el('strong', { text: h.status }), ` ${STATUS_WORDS[h.status] || ''} `, el('span', { class: 'muted small', text: when(h.at) })));
  put(box,
    el('div', { class: 'payment-head' },
      el('span', { class: `status-code ${p.final ? 'final' : 'live'}`, 'data-status': p.status || '', 'data-final': String(Boolean(p.final)), text: p.status || '…' }),
      el('span', { text: ` ${label(p.state)}${p.final ? ' — final' : ' — following…'}` })),
    p.instructedAmount ? el('p', {}, `${money(p.instructedAmount)} to ${p.creditorName} (${p.creditorAccount?.iban || ''})`) : null,
    p.failure ? el('p', { class: 'form-error', text: `Failure: ${p.failure.code}` }) : null,
    p.authUrl && !p.final ? el('p', {}, el('a', { href: p.authUrl }, 'Authorise at the bank')) : null,
    el('ol', { class: 'timeline' }, steps));
}

// ---------------------------------------------------------------------------------------
// Bulk upload

/** Parses CSV text (RFC 4180: quotes, doubled quotes, CRLF). Returns rows of cells. */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i += 1;
      } else if (c === '"') {
        quoted = false;
      } else {
        cell += c;
      }
    } else if (c === '"') {
      quoted = true;
    } else if (c === ',' || c === ';') {
      row.push(cell);
      cell = '';
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i += 1;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
    } else {
      cell += c;
    }
  }
  if (cell !== '' || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows.filter((r) => r.some((c) => c.trim() !== ''));
}

const CSV_COLUMNS = ['creditorName', 'creditorIban', 'amount', 'currency', 'reference'];

/** CSV rows → the batch's payments, with the file line of each (for error messages). */
function paymentsFromCsv(text) {
  const rows = parseCsv(text);
  const problems = [];
  if (!rows.length) return { payments: [], lines: [], problems: [{ line: null, message: 'The file has no rows.' }] };
  let columns = CSV_COLUMNS;
  let first = 0;
  const header = rows[0].map((c) => c.trim().toLowerCase());
  if (header.some((c) => c.includes('iban') || c.includes('name'))) {
    columns = header.map((h) => {
      if (h.includes('iban')) return 'creditorIban';
      if (h.includes('name')) return 'creditorName';
      if (h.includes('amount')) return 'amount';
      if (h.includes('currency')) return 'currency';
      if (h.includes('reference') || h.includes('remittance')) return 'reference';
      if (h.includes('endtoend') || h.includes('e2e')) return 'endToEnd';
      return null;
    });
    first = 1;
  }
  const payments = [];
  const lines = [];
  rows.slice(first).forEach((cells, i) => {
    const line = i + first + 1;
    const row = {};
    columns.forEach((name, c) => {
      if (name) row[name] = (cells[c] ?? '').trim();
    });
    if (!row.creditorIban || !row.amount || !row.creditorName) {
      problems.push({ line, message: 'needs a name, an IBAN and an amount' });
      return;
    }
    const payment = {
      instructedAmount: { amount: row.amount, currency: (row.currency || 'EUR').toUpperCase() },
      creditorAccount: { iban: row.creditorIban.replace(/\s+/g, '') },
      creditorName: row.creditorName,
    };
    if (row.reference) payment.remittanceInformationUnstructured = row.reference;
    if (row.endToEnd) payment.endToEndIdentification = row.endToEnd;
    payments.push(payment);
    lines.push(line);
  });
  return { payments, lines, problems };
}

async function loadBulk() {
  await ensureBanks();
  const batch = JSON.parse(sessionStorage.getItem(KEY.batch) || 'null');
  if (batch) followBatch(batch.batchId);
}

async function uploadBatch(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  $('#bulk-row-errors').replaceChildren();
  const file = form.elements.file.files[0];
  if (!file) {
    showProblem(form, new ApiError(400, { errors: [{ field: 'file', message: 'Choose a CSV file.' }] }));
    return;
  }
  const { payments, lines, problems } = paymentsFromCsv(await file.text());
  if (problems.length) {
    $('#bulk-row-errors').replaceChildren(...problems.map((p) => el('li', { text: p.line ? `Line ${p.line}: ${p.message}` : p.message })));
    return;
  }
  const body = {
    bankId: form.elements.bankId.value,
    debtorAccount: { iban: form.elements.debtorIban.value.replace(/\s+/g, '') },
    redirectUrl: `${location.origin}/`,
    payments,
  };
  $('#bulk-button').disabled = true;
  try {
    const accepted = await api('POST', '/v1/payment-batches', { body, headers: { 'idempotency-key': newKey() } });
    sessionStorage.setItem(KEY.batch, JSON.stringify({ batchId: accepted.batchId, items: [] }));
    flash(`${accepted.total} payments accepted; the bank initiates them one by one.`, 'success');
    followBatch(accepted.batchId);
  } catch (error) {
    // Item errors ("payments[3].creditorAccount.iban") are shown per CSV line.
    const rowErrors = [];
    showProblem(form, error, {
      fieldMap: (field) => {
        const m = /^payments\[(\d+)\]\.?(.*)$/.exec(field || '');
        if (!m) return field;
        rowErrors.push({ line: lines[Number(m[1])], field: m[2] });
        return null;
      },
    });
    const messages = error.fieldErrors.filter((e) => /^payments\[\d+\]/.test(e.field || ''));
    $('#bulk-row-errors').replaceChildren(...messages.map((e, i) =>
      el('li', { 'data-line': rowErrors[i]?.line, text: `Line ${rowErrors[i]?.line}: ${rowErrors[i]?.field} — ${e.message}` })));
    const general = $('.form-error', form);
    if (messages.length && general.textContent.includes('payments[')) general.hidden = true;
  } finally {
    $('#bulk-button').disabled = false;
  }
}

function followBatch(batchId) {
  clearInterval(state.batchTimer);
  const tick = async () => {
    try {
      const batch = await api('GET', `/v1/payment-batches/${encodeURIComponent(batchId)}?limit=1000`);
      sessionStorage.setItem(KEY.batch, JSON.stringify({ batchId, items: (batch.items || []).map((i) => i.paymentId) }));
      renderBatch(batch);
      if (batch.done) {
        clearInterval(state.batchTimer);
        refreshInboxBadge();
      }
    } catch (error) {
      clearInterval(state.batchTimer);
      if (error.status === 404) sessionStorage.removeItem(KEY.batch);
      $('#bulk-status').replaceChildren(el('p', { class: 'form-error', text: error.message }));
    }
  };
  tick();
  state.batchTimer = setInterval(tick, POLL_MS);
}

function renderBatch(batch) {
  const counts = batch.counts || {};
  const finished = FINAL_BATCH_STATES.reduce((sum, s) => sum + (counts[s] || 0), 0);
  const percent = batch.total ? Math.floor((100 * finished) / batch.total) : 0;
  const waiting = (batch.items || []).filter((i) => i.state === 'awaiting_authorisation' && i.authUrl);
  $('#bulk-status').dataset.batchId = batch.batchId;
  put($('#bulk-status'),
    el('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': percent },
      el('div', { class: 'bar', style: `width:${percent}%` })),
    el('p', {}, el('strong', { 'data-testid': 'bulk-percent', 'data-percent': percent, text: `${percent} %` }),
      ` — ${finished} of ${batch.total} final${batch.done ? ', done' : ''}`),
    el('ul', { class: 'counts' }, Object.entries(counts).filter(([, n]) => n > 0).map(([s, n]) =>
      el('li', { 'data-state': s }, el('span', { class: `status state-${s}`, text: label(s) }), ` ${n}`))),
    waiting.length ? el('p', {}, `${waiting.length} payments wait for your authorisation at the bank. `,
      el('a', { href: waiting[0].authUrl, 'data-authorise-next': waiting[0].paymentId }, 'Authorise the next one')) : null);
}

// ---------------------------------------------------------------------------------------
// Inbox

async function loadInbox() {
  const answer = await api('GET', '/v1/notifications');
  const list = answer.notifications || [];
  $('#notifications').replaceChildren(...(list.length ? list.map((n) =>
    el('li', { 'data-kind': n.kind },
      el('div', {}, el('strong', { text: n.title }), el('span', { class: 'muted small', text: ` ${when(n.createdAt)}` })),
      el('div', { text: n.message }))) : [el('li', { class: 'muted', text: 'No notifications yet.' })]));
  if (list[0]) localStorage.setItem(KEY.seen, list[0].createdAt);
  setBadge(0);
}

async function refreshInboxBadge() {
  try {
    const answer = await api('GET', '/v1/notifications?limit=50');
    const seen = localStorage.getItem(KEY.seen) || '';
    setBadge((answer.notifications || []).filter((n) => n.createdAt > seen).length);
  } catch {
    // The badge is a nicety.
  }
}

function setBadge(n) {
  const badge = $('#inbox-count');
  badge.textContent = String(n);
  badge.hidden = n === 0;
}

// ---------------------------------------------------------------------------------------
// Start

async function start() {
  $('#signin-form').addEventListener('submit', signIn);
  $('#sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('#pay-form').addEventListener('submit', pay);
  $('#bulk-form').addEventListener('submit', uploadBatch);
  $('#tx-filters').addEventListener('submit', (event) => {
    event.preventDefault();
    loadTransactions(false).catch((error) => flash(error.message, 'error'));
  });
  $('#tx-more').addEventListener('click', () => loadTransactions(true).catch((error) => flash(error.message, 'error')));
  $('#base-currency').addEventListener('change', () => loadDashboard().catch((error) => flash(error.message, 'error')));
  $('#refresh').addEventListener('click', () => {
    state.refreshNext = true;
    loadDashboard().catch((error) => flash(error.message, 'error'));
  });
  window.addEventListener('hashchange', route);
  for (const link of $$('.tabs a')) link.addEventListener('click', clearFlash);
  if (!sessionStorage.getItem(KEY.token)) {
    $('#signin').hidden = false;
    return;
  }
  await ensureBanks();
  await handleReturn();
  await showApp();
}

start();
