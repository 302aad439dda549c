#!/usr/bin/env node
/**
 * Drives Slipway's web UI in Debian's Chromium as a person would: signs in with an API token,
 * watches a running build's log grow, opens the environments page, promotes a release to prod
 * and watches the deployment's steps advance, promotes the next, rolls back, and looks at the
 * releases; it also opens the pages on a phone-sized screen in dark mode. Saves a screenshot of
 * each page.
 *
 * Run by the Rust test `web_ui::...` (tests/api/web_ui.rs), which starts the server and the
 * builds. Everything comes from the environment, so the token never shows in a process list:
 *
 *   SLIPWAY_URL, SLIPWAY_TOKEN, PROJECT, LIVE_BUILD (a build running now whose log grows),
 *   PASSED_BUILD (a build that passed), SHOTS (the screenshot folder)
 *
 * Prints one JSON object of what it saw on stdout; exits 1 (saying why on stderr) when a
 * check fails.
 */
import fs from 'node:fs';
import path from 'node:path';
import { launch } from './browser.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('SLIPWAY_URL');
const token = env('SLIPWAY_TOKEN');
const project = env('PROJECT');
const liveBuild = env('LIVE_BUILD');
const passedBuild = env('PASSED_BUILD');
const shots = env('SHOTS');
fs.mkdirSync(shots, { recursive: true });

const seen = {};
function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await launch();
const pageErrors = [];
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  const shot = (name) => page.screenshot({ path: path.join(shots, name + '.png'), fullPage: true });
  const lines = () => page.evaluate(() => Number(document.querySelector('.slw-log')?.dataset.lines || 0));

  // Signed out, every page sends the browser to the sign-in form.
  await page.goto(`${base}/projects/${project}/environments`);
  check(new URL(page.url()).pathname === '/sign-in', `not sent to sign in: ${page.url()}`);
  await shot('01-sign-in');
  await page.fill('#token', 'slw_not-a-token');
  await page.click('form.sign-in button[type=submit]');
  check((await page.textContent('.error')).includes('no such token'), 'a wrong token is not refused');
  await page.fill('#token', token);
  await page.click('form.sign-in button[type=submit]');
  await page.waitForURL(`${base}/projects/${project}/environments`);
  const cookie = (await context.cookies()).find((c) => c.name === 'slipway_session');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Lax', `session cookie: ${JSON.stringify({ ...cookie, value: undefined })}`);
  seen.cookie = { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite };

  await page.goto(`${base}/`);
  await page.waitForSelector(`main a[href="/projects/${project}"]`);
  await shot('02-projects');

  // The builds page shows the running build with a progress bar measured against the passed one.
  await page.goto(`${base}/projects/${project}`);
  await page.waitForSelector(`tr[data-build="${liveBuild}"] progress`);
  seen.progress_label = await page.getAttribute(`tr[data-build="${liveBuild}"] progress`, 'aria-label');
  await shot('03-builds');

  // The running build's log grows without a reload.
  await page.goto(`${base}/projects/${project}/builds/${liveBuild}`);
  await page.waitForFunction(() => Number(document.querySelector('.slw-log')?.dataset.lines) > 0);
  const before = await lines();
  await page.waitForFunction((n) => Number(document.querySelector('.slw-log').dataset.lines) > n, before, { timeout: 30000 });
  const after = await lines();
  seen.live_lines = { before, after };
  check(await page.$('.slw-log-text span.slw-fg-2'), 'no green (ANSI 32) span in the log');
  await shot('04-build-live');

  // Environments, then promote v1 to prod through the confirmation.
  await page.goto(`${base}/projects/${project}/environments`);
  await page.waitForSelector('[data-environment="prod"] #promote-prod');
  await shot('05-environments');
  seen.deployments = [];
  for (const [action, release, name] of [['promote', 'v1', '06'], ['promote', 'v2', '08'], ['rollback', 'v1', '10']]) {
    await page.goto(`${base}/projects/${project}/environments`);
    await page.waitForSelector(`#${action}-prod`);
    await page.selectOption(`#${action}-prod`, release);
    const label = action === 'promote' ? 'Promote' : 'Roll back';
    await page.click(`[data-environment="prod"] button.action:text-is("${label}")`);
    await page.waitForSelector('#confirm[open]');
    const title = await page.textContent('#confirm-title');
    check(title.includes(release) && title.includes('prod'), `the confirmation does not name ${release} and prod: ${title}`);
    if (name === '06') await shot('06-confirm-promote');
    await page.click('#confirm-ok');
    await page.waitForURL(/\/deployments\//, { timeout: 30000 });
    // Watch the steps advance: the rows and the state as they change, until the end.
    const states = [];
    const started = Date.now();
    let shotRunning = false;
    for (;;) {
      const now = await page.evaluate(() => ({
        state: document.querySelector('#deployment-state')?.textContent || '',
        steps: [...document.querySelectorAll('tr[data-step]')].map((row) => row.dataset.step + (row.classList.contains('current') ? '…' : '')),
      }));
      const key = now.state + ' ' + now.steps.join(',');
      if (now.state && (!states.length || states[states.length - 1] !== key)) states.push(key);
      if (!shotRunning && now.steps.length && name === '06') {
        await shot('07-deployment-running');
        shotRunning = true;
      }
      if (/succeeded|retaining blue|failed|rolled back/.test(now.state)) break;
      check(Date.now() - started < 120000, `the deployment did not end: ${states.join(' | ')}`);
      await page.waitForTimeout(150);
    }
    check(/^(succeeded|retaining blue)/.test(states[states.length - 1]), `${action} ${release}: ${states.join(' | ')}`);
    seen.deployments.push({ action, release, states });
    if (name === '06') await shot('07-deployment-done');
    if (name === '10') await shot('10-rolled-back');
  }

  // Releases: where each runs now, and a rebake asks first (cancelled here: nothing is baked).
  await page.goto(`${base}/projects/${project}/releases`);
  await page.waitForSelector('[data-release="v1"] .where');
  seen.v1_runs = await page.textContent('[data-release="v1"] .where');
  check(seen.v1_runs.includes('prod (live)'), `v1 does not say it is live in prod: ${seen.v1_runs}`);
  await page.click('[data-release="v2"] button.action:text-is("Rebake")');
  await page.waitForSelector('#confirm[open]');
  check((await page.textContent('#confirm-title')).includes('v2'), 'the rebake confirmation does not name v2');
  await shot('11-confirm-rebake');
  await page.keyboard.press('Escape');
  await shot('12-releases');

  // Cancel the running build from its page.
  await page.goto(`${base}/projects/${project}/builds/${liveBuild}`);
  await page.click('button.action:text-is("Cancel build")');
  await page.waitForSelector('#confirm[open]');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /cancel/.test(document.querySelector('main h1')?.textContent || ''), null, { timeout: 60000 });
  await shot('13-build-cancelled');

  // Rebuild the passed build: the new build's page opens.
  await page.goto(`${base}/projects/${project}/builds/${passedBuild}`);
  await page.click('button.action:text-is("Rebuild")');
  await page.click('#confirm-ok');
  await page.waitForURL((url) => /\/builds\/\d+$/.test(url.pathname) && !url.pathname.endsWith(`/builds/${passedBuild}`));
  seen.rebuild = new URL(page.url()).pathname;

  // Keyboard: the first Tab reaches the skip link, and the page's controls are buttons and links.
  await page.goto(`${base}/projects/${project}/environments`);
  await page.waitForSelector('#promote-prod');
  await page.keyboard.press('Tab');
  seen.first_tab = await page.evaluate(() => document.activeElement?.textContent);

  // A phone in dark mode.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', deviceScaleFactor: 2 });
  await phone.addCookies([{ ...cookie }]);
  const small = await phone.newPage();
  await small.goto(`${base}/projects/${project}/environments`);
  await small.waitForSelector('[data-environment="prod"]');
  seen.phone_overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  seen.dark_background = await small.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await small.screenshot({ path: path.join(shots, '14-phone-dark-environments.png'), fullPage: true });
  await small.goto(`${base}/projects/${project}/builds/${passedBuild}`);
  await small.waitForFunction(() => Number(document.querySelector('.slw-log')?.dataset.lines) > 0);
  await small.screenshot({ path: path.join(shots, '15-phone-dark-build.png') });
  await phone.close();

  check(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);
  seen.screenshots = fs.readdirSync(shots).sort();
  process.stdout.write(JSON.stringify(seen) + '\n');
} catch (error) {
  process.stderr.write(`ui check failed: ${error.stack || error}\npage errors: ${pageErrors.join('; ')}\n`);
  process.stdout.write(JSON.stringify(seen) + '\n');
  process.exitCode = 1;
  // What the page showed when the check failed.
  if (page) await page.screenshot({ path: path.join(shots, 'failed.png'), fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
