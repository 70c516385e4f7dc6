// Browser check of the responder's first screen (issues 14, 17), driven by
// collector/tests/ui_browser.rs against a collector fed through its real ingest API.
// Headless Debian Chromium through playwright-core, at 1440×900.
//
//   node signal-view.js URL VIEWER_TOKEN CHAIN_ID SHOT_DIR
//
// Progress goes to stderr; the last stdout line is a JSON result with what was
// measured (the Rust side asserts on it). Every wait has a deadline.
'use strict';

const path = require('path');
const { chromium } = require('playwright-core');

const [url, token, chainId, shotDir] = process.argv.slice(2);
if (!shotDir) {
  console.error('usage: node signal-view.js URL VIEWER_TOKEN CHAIN_ID SHOT_DIR');
  process.exit(2);
}
const base = url.replace(/\/$/, '');
const W = 1440, H = 900;

function step(msg) { console.error(`[signal-view] ${msg}`); }

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const out = {};
  try {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: W, height: H } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(30000);
    page.on('pageerror', (e) => step(`page error: ${e.message}`));
    await page.goto(`${base}/`);
    await page.waitForURL(/\/login/);
    await page.getByLabel('Operator token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL(/\/fleet$/);
    step('signed in');

    await page.goto(`${base}/chains/${encodeURIComponent(chainId)}`);
    await page.waitForSelector('svg.chain-graph');
    // The graph, scrolled to the top of its section: its box inside the viewport.
    await page.evaluate(() => document.querySelector('#graph').scrollIntoView({ block: 'start' }));
    out.graph = await page.evaluate(() => {
      const r = document.querySelector('svg.chain-graph').getBoundingClientRect();
      return { left: r.left, top: r.top, right: r.right, bottom: r.bottom, vw: window.innerWidth, vh: window.innerHeight };
    });
    out.uncovered_nodes = await page.locator('svg .node.uncovered').count();
    out.uncovered_mark = (await page.locator('svg .n-mark').allTextContents()).join('|');
    out.helper_boxes = await page.locator('svg a.node[data-exec$=":200:1200"]').count();
    out.opaque_summary = (await page.locator('#opaque-summary').textContent() || '').trim();
    out.opaque_rows = await page.locator('#opaque .opaque-conn').count();
    out.opaque_text = (await page.locator('#opaque').textContent() || '').replace(/\s+/g, ' ');
    await page.screenshot({ path: path.join(shotDir, 'signal-chain-top.png') });

    // The first screen of the timeline: its heading at the top of the viewport.
    await page.evaluate(() => document.querySelector('#timeline').scrollIntoView({ block: 'start' }));
    const onScreen = async (text) => page.evaluate((t) => {
      const rows = [...document.querySelectorAll('#timeline > table.events > tbody > tr')];
      const row = rows.find((r) => r.textContent.includes(t));
      if (!row) return { found: false };
      const b = row.getBoundingClientRect();
      return { found: true, top: b.top, bottom: b.bottom, inside: b.top >= 0 && b.bottom <= window.innerHeight };
    }, text);
    out.llm_request = await onScreen('llm openai gpt-story');
    out.tool_call = await onScreen('1 tool calls');
    out.denied_read = await onScreen('open /etc/shadow');
    out.top_rows = await page.locator('#timeline > table.events > tbody > tr').count();
    out.folds = await page.locator('#timeline tr.fold summary').allTextContents();
    out.folds = out.folds.map((t) => t.replace(/\s+/g, ' ').trim());
    await page.screenshot({ path: path.join(shotDir, 'signal-timeline-first-screen.png') });

    // "show" expands a fold in place.
    const first = page.locator('#timeline details.fold').first();
    out.fold_hidden_before = !(await page.locator('#timeline table.folded tr', { hasText: 'mod0.py' }).first().isVisible());
    await first.locator('summary').click();
    out.fold_shown_after = await page.locator('#timeline table.folded tr', { hasText: 'mod0.py' }).first().isVisible();
    await ctx.close();
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
