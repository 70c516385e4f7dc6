// Browser test of the collector web UI, driven by tests/tests/ui.rs against a
// collector fed by real sensors. Headless Debian Chromium through playwright-core.
//
//   node ui-test.js URL RESPONDER_TOKEN VIEWER_TOKEN CHAIN_ID SHOT_DIR HOSTS CA_PEM
//
// HOSTS is a comma-separated list of host ids that must show as connected and be in
// the chain. Progress goes to stderr; the last stdout line is a JSON result
// ({"action_id", "screenshots"}). Every wait polls with a deadline: no fixed sleeps.
'use strict';

const fs = require('fs');
const path = require('path');
const tls = require('tls');
const { chromium } = require('playwright-core');

const [url, responderToken, viewerToken, chainId, shotDir, hostsCsv, caPath] = process.argv.slice(2);
if (!caPath) {
  console.error('usage: node ui-test.js URL RESPONDER_TOKEN VIEWER_TOKEN CHAIN_ID SHOT_DIR HOSTS CA_PEM');
  process.exit(2);
}
const hosts = hostsCsv.split(',');
const base = url.replace(/\/$/, '');
const WAIT = 30000;
const shots = [];
let current = null; // the page to keep when a check fails


function step(msg) {
  console.error(`[ui-test] ${msg}`);
}

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

// The browser ignores certificate errors (the collector's CA is not in its store);
// this checks, with Node's TLS, that the served certificate is valid for the UI's
// address under the collector's CA and that h2 is negotiated as a browser would.
function verifyServerCertificate() {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host: u.hostname,
      port: Number(u.port),
      ca: fs.readFileSync(caPath),
      ALPNProtocols: ['h2', 'http/1.1'],
    }, () => {
      const ok = s.authorized && s.alpnProtocol === 'h2';
      const why = s.authorizationError || `alpn ${s.alpnProtocol}`;
      s.end();
      ok ? resolve() : reject(new Error(`TLS check: ${why}`));
    });
    s.on('error', reject);
  });
}

async function shot(page, name, fullPage = true) {
  const p = path.join(shotDir, name);
  await page.screenshot({ path: p, fullPage });
  shots.push(p);
  step(`screenshot ${p}`);
}

async function signIn(browser, token) {
  const ctx = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1440, height: 900 },
  });
  const page = await ctx.newPage();
  current = page;
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => step(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') step(`console: ${m.text()}`); });
  page.on('requestfailed', (r) => step(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => { if (r.url().includes('/live/')) step(`live stream ${r.status()} ${r.url()}`); });
  await page.goto(`${base}/`);
  await page.waitForURL(/\/login/);
  await page.getByLabel('Operator token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/fleet$/);
  return { ctx, page };
}

// A POST from inside the page (same origin, with the session cookie).
async function forgedPost(page, pathname, body) {
  return page.evaluate(async ([p, b]) => {
    const r = await fetch(p, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: b,
      redirect: 'manual',
    });
    return r.status;
  }, [pathname, body]);
}

async function csrfOf(page) {
  return page.locator('form[action="/logout"] input[name="csrf"]').inputValue();
}

async function main() {
  fs.mkdirSync(shotDir, { recursive: true });
  await verifyServerCertificate();
  step('server certificate verified against the collector CA (h2)');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  try {
    // Responder: sign in, see the fleet.
    const { ctx, page } = await signIn(browser, responderToken);
    step('signed in as responder');
    for (const h of hosts) {
      await page.locator(`tr[data-host="${h}"][data-connected="true"]`).waitFor();
    }
    check((await page.locator('tr[data-host]').count()) >= hosts.length, 'every host listed');
    await shot(page, 'fleet.png');

    // The chain list, then the chain: its hops as a graph.
    await page.getByRole('link', { name: 'Chains', exact: true }).click();
    await page.waitForURL(/\/chains$/);
    const row = page.locator(`tr[data-chain="${chainId}"]`);
    await row.waitFor();
    await row.getByRole('link').first().click();
    await page.waitForURL(/\/chains\/[^?]+$/);
    const chainUrl = page.url();
    for (const h of hosts) {
      await page.locator(`svg.chain-graph g.band[data-host="${h}"]`).waitFor();
    }
    for (const a of ['agent-a', 'agent-b', 'agent-c']) {
      await page.locator('svg.chain-graph a.node.agent', { hasText: a }).first().waitFor();
    }
    check((await page.locator('svg.chain-graph .node.human').count()) === 1, 'the human at the root');
    check((await page.locator('svg.chain-graph g.edge.net').count()) >= 2, 'two network hops drawn');
    step('chain graph shows three hosts, three agents and the human');
    // Live: host C keeps forking, so the page refreshes itself without a reload.
    await page.waitForFunction(() => document.body.dataset.refreshed, null, { timeout: WAIT });
    step('chain page refreshed live');
    await shot(page, 'chain.png', false);

    // A node opens its details: exec id, argv.
    await page.locator('svg.chain-graph a.node.agent', { hasText: 'agent-b' }).first().click();
    const details = page.locator('#details');
    await details.waitFor();
    const execId = (await details.locator('code.exec-id').innerText()).trim();
    check(/^host-b:\d+:\d+$/.test(execId), `details show agent-b's exec id (${execId})`);
    const argv = await details.locator('ol.argv li').allInnerTexts();
    check(argv.some((a) => a.includes('hop')), `details show argv (${argv})`);
    step(`node details: ${execId} ${argv.join(' ')}`);

    // The policy denies host C's agent its reads of HR data: the chain marks the denied node
    // (live, as alerts come in), and the alert can be acknowledged.
    await page.goto(chainUrl);
    await page.locator('svg.chain-graph .node.denied').first().waitFor();
    await page.locator('svg.chain-graph .node.res.denied', { hasText: 'denied open_read' }).first().waitFor();
    step('chain graph marks the denied read');
    await page.getByRole('link', { name: 'Alerts', exact: true }).click();
    await page.waitForURL(/\/alerts$/);
    // (The first denials can come before the hops are joined into one chain: those
    // name a chain of their own.)
    const firstOpen = page.locator('tr[data-alert][data-status="open"]', { hasText: 'ui-test-no-hr-reads' })
      .filter({ hasText: chainId }).first();
    await firstOpen.waitFor();
    // New alerts keep arriving (and refresh the list live): hold on to this one by id.
    const alertId = await firstOpen.getAttribute('data-alert');
    const alertRow = page.locator(`tr[data-alert="${alertId}"]`);
    check((await alertRow.innerText()).includes(chainId), 'the alert names the chain');
    await shot(page, 'alerts.png', false);
    await alertRow.getByRole('button', { name: 'Acknowledge' }).click();
    await page.waitForURL(/\/alerts$/);
    await page.locator(`tr[data-alert="${alertId}"][data-status="acknowledged"]`).waitFor();
    step(`alert ${alertId} acknowledged`);

    // A viewer: no action buttons, a forged POST is refused.
    {
      const v = await signIn(browser, viewerToken);
      await v.page.goto(chainUrl);
      await v.page.locator('svg.chain-graph').waitFor();
      check((await v.page.locator('[data-verb]').count()) === 0, 'viewer sees no action button');
      const st = await forgedPost(v.page, '/respond',
        `csrf=${await csrfOf(v.page)}&verb=kill&scope=chain&target=${encodeURIComponent(chainId)}&reason=forged`);
      check(st === 403, `viewer's forged kill refused (${st})`);
      const r = await v.page.goto(`${base}/respond?verb=kill&scope=chain&target=${encodeURIComponent(chainId)}`);
      check(r.status() === 403, `viewer's confirmation page refused (${r.status()})`);
      await v.ctx.close();
      current = page;
      step('viewer: no buttons, forged POST 403, confirmation 403');
    }

    // CSRF: the responder's POST without the token is refused.
    await page.goto(chainUrl);
    const st = await forgedPost(page, '/respond',
      `verb=kill&scope=chain&target=${encodeURIComponent(chainId)}&reason=no-token`);
    check(st === 403, `POST without the CSRF token refused (${st})`);
    await page.goto(`${base}/actions`);
    check((await page.locator('tr[data-action]', { hasText: 'kill' }).count()) === 0,
      'nothing was issued by refused requests');
    step('CSRF: POST without the token refused, nothing issued');

    // Kill the chain: the confirmation states the blast radius and needs a reason.
    await page.goto(chainUrl);
    await page.locator('a[data-verb="kill"]').click();
    await page.waitForURL(/\/respond\?/);
    const blast = page.locator('.blast-summary');
    check(Number(await blast.getAttribute('data-hosts')) === hosts.length, 'blast radius names every host');
    check(Number(await blast.getAttribute('data-processes')) >= hosts.length, 'blast radius counts processes');
    for (const h of hosts) {
      check(Number(await page.locator(`table.blast-hosts tr[data-host="${h}"]`).getAttribute('data-processes')) >= 1,
        `processes on ${h} in the blast radius`);
    }
    step(`blast radius: ${await blast.innerText()}`);
    await page.getByLabel(/Reason/).fill('ui test: exfiltration in progress');
    await page.getByRole('button', { name: /Confirm/ }).click();
    await page.waitForURL(/\/actions\/act-/);
    const actionId = decodeURIComponent(page.url().split('/actions/')[1]);
    // Per-host confirmations arrive live.
    for (const h of hosts) {
      await page.locator(`table.deliveries tr[data-host="${h}"][data-follow-up="false"][data-state="ok"]`)
        .waitFor({ timeout: WAIT });
    }
    await page.locator('p.status-line[data-status="done"]').waitFor();
    step(`action ${actionId}: every host confirmed`);
    await shot(page, 'action.png');
    await page.goto(`${base}/actions`);
    await page.locator(`tr[data-action="${actionId}"]`).waitFor();
    const audited = await page.locator('table.audit tr', { hasText: actionId }).count();
    check(audited >= 1 + hosts.length, `audit trail: issued + a confirmation per host (${audited})`);
    await shot(page, 'actions.png');

    // Revoke the root agent's token everywhere from its credential page: the
    // confirmation needs a reason, and every host confirms.
    await page.goto(`${base}/credentials?kind=github_token`);
    const credRow = page.locator('table.creds tbody tr[data-fingerprint]').first();
    await credRow.waitFor({ timeout: WAIT });
    const fingerprint = await credRow.getAttribute('data-fingerprint');
    await credRow.locator('th a').click();
    await page.waitForURL(/\/credentials\/hmac-sha256/);
    await page.locator('a[data-verb="revoke"]').click();
    await page.waitForURL(/\/respond\?/);
    await page.getByLabel(/Reason/).fill('ui test: token pasted in a public issue');
    await page.getByRole('button', { name: /Confirm/ }).click();
    await page.waitForURL(/\/actions\/act-/);
    const revokeId = decodeURIComponent(page.url().split('/actions/')[1]);
    for (const h of hosts) {
      await page.locator(`table.deliveries tr[data-host="${h}"][data-follow-up="false"][data-state="ok"]`)
        .waitFor({ timeout: WAIT });
    }
    await page.locator('p.status-line[data-status="done"]').waitFor();
    await page.goto(`${base}/credentials/${encodeURIComponent(fingerprint)}`);
    check((await page.locator('.badge', { hasText: 'revoked' }).count()) >= 1, 'the credential shows as revoked');
    check((await page.locator('a[data-verb="revoke"]').count()) === 0, 'no second revoke offered');
    step(`revoked ${fingerprint} from the UI (${revokeId}): every host confirmed`);
    await shot(page, 'credential.png');

    // Sign out: the cookie goes, and the old session id is dead on the server.
    const saved = await ctx.cookies();
    check(saved.some((c) => c.name === '__Host-custody' && c.httpOnly && c.secure && c.sameSite === 'Strict'),
      'session cookie is HttpOnly, Secure, SameSite=Strict');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(/\/login/);
    await page.goto(`${base}/fleet`);
    check(/\/login/.test(page.url()), 'signed out: back to sign-in');
    await ctx.addCookies(saved);
    await page.goto(`${base}/fleet`);
    check(/\/login/.test(page.url()), 'the old session cookie no longer works');
    step('signed out');
    await ctx.close();
    console.log(JSON.stringify({ action_id: actionId, node: execId, alert_id: alertId, revoke_id: revokeId, fingerprint, screenshots: shots }));
  } catch (e) {
    if (current) {
      const f = path.join(shotDir, 'failure');
      await current.screenshot({ path: `${f}.png`, fullPage: true }).catch(() => {});
      fs.writeFileSync(`${f}.html`, await current.content().catch(() => ''));
      step(`failure page kept: ${f}.png, ${f}.html (${current.url()})`);
    }
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`[ui-test] FAILED: ${e.stack || e}`);
  process.exit(1);
});
