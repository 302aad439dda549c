#!/usr/bin/env node
/**
 * Checks a page's build log viewer (src/server/ui/assets/log.js) in Debian's Chromium and
 * measures it: how long until a long log is all loaded and scrolled to its last line, whether
 * the page stays responsive while the log scrolls, line links, ANSI colours, and follow mode.
 *
 *   node tests/e2e/log_view_check.mjs <page-url> <expected-lines> [options]
 *
 *   --max-load-ms MS      the load time over which the check fails (default 2000, the bound)
 *   --screenshots DIR     saves screenshots of the log there
 *   --no-colours          the log has no ANSI colours: do not look for them
 *
 * The page must hold one log view (`.slw-log`) that loads the log as it opens and follows it
 * (LogView's default), so that the view ends at the last line. Prints one JSON object of figures
 * and checks on stdout; exits 1 when a check failed, 2 on wrong arguments.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launch } from './browser.mjs';

const usage = 'usage: [SLIPWAY_COOKIE=NAME=VALUE] log_view_check.mjs <page-url> <expected-lines> ' +
  '[--max-load-ms MS] [--screenshots DIR] [--no-colours]';

function parseArgs(argv) {
  const options = { cookies: [], maxLoadMs: 2000, screenshots: null, colours: true };
  // A signed-in session's cookie comes from the environment: a process's arguments are
  // visible to every user of the machine.
  const cookie = process.env.SLIPWAY_COOKIE || '';
  if (cookie) {
    const eq = cookie.indexOf('=');
    if (eq < 1) throw new Error('SLIPWAY_COOKIE takes NAME=VALUE');
    options.cookies.push({ name: cookie.slice(0, eq), value: cookie.slice(eq + 1) });
  }
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--max-load-ms') {
      options.maxLoadMs = Number(argv[++i]);
      if (!(options.maxLoadMs > 0)) throw new Error('--max-load-ms takes a number of milliseconds');
    } else if (arg === '--screenshots') {
      options.screenshots = argv[++i];
      if (!options.screenshots) throw new Error('--screenshots takes a folder');
    } else if (arg === '--no-colours') {
      options.colours = false;
    } else if (arg.startsWith('--')) {
      throw new Error(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 2) throw new Error('a page URL and a line count are needed');
  options.url = new URL(positional[0]).href;
  options.expected = Number(positional[1]);
  if (!Number.isInteger(options.expected) || options.expected < 2) {
    throw new Error('the expected line count must be a whole number of 2 or more');
  }
  return options;
}

let options;
try {
  options = parseArgs(process.argv.slice(2));
} catch (error) {
  console.error(`log_view_check: ${error.message}\n${usage}`);
  process.exit(2);
}

/** Pauses, in the page, for the longest of the page's own work to show. */
const STEP_TIMEOUT = 10000;
/** A page that takes longer than this to answer after a scroll counts as hanging. */
const RESPONSIVE_MS = 200;

const figures = { url: options.url, expected_lines: options.expected };
const failures = [];
function check(name, ok, detail) {
  if (!ok) failures.push(detail === undefined ? name : `${name}: ${detail}`);
  return ok;
}
const round = (ms) => Math.round(ms * 10) / 10;

const SEL = {
  log: '.slw-log',
  viewport: '.slw-log .slw-log-viewport',
  follow: '.slw-log .slw-log-follow',
  save: '.slw-log .slw-log-save',
};

/** Runs in the page before its own scripts: records long tasks and animation frame gaps. */
function instrument() {
  window.__check = { longtasks: [], longtaskSupported: false, frames: null };
  try {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        window.__check.longtasks.push({ start: entry.startTime, duration: entry.duration });
      }
    }).observe({ type: 'longtask', buffered: true });
    window.__check.longtaskSupported = true;
  } catch (e) {
    // Not every browser has long tasks; the frame gaps still tell.
  }
}

async function snapshot(page) {
  return page.evaluate(() => {
    const c = document.querySelector('.slw-log');
    return c ? { ...c.dataset } : null;
  });
}

/** Frame gaps are recorded while `during` runs; the longest one, in ms. */
async function longestFrameGap(page, during) {
  await page.evaluate(() => {
    const state = { last: performance.now(), max: 0, running: true };
    window.__check.frames = state;
    const tick = (now) => {
      state.max = Math.max(state.max, now - state.last);
      state.last = now;
      if (state.running) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  await during();
  return page.evaluate(() => new Promise((resolve) => {
    requestAnimationFrame(() => {
      window.__check.frames.running = false;
      resolve(window.__check.frames.max);
    });
  }));
}

/** Two animation frames: the view has drawn what it was told before. */
function twoFrames(page) {
  return page.evaluate(() => new Promise((resolve) => {
    requestAnimationFrame(() => requestAnimationFrame(() => resolve(true)));
  }));
}

/** What the view shows now: rows, their heights, colours, raw escapes, foreign elements. */
async function inspectRows(page) {
  return page.evaluate(() => {
    const c = document.querySelector('.slw-log');
    const vp = c.querySelector('.slw-log-viewport');
    const rows = Array.from(c.querySelectorAll('.slw-log-row'));
    const heights = new Set(rows.map((r) => r.getBoundingClientRect().height));
    const texts = Array.from(c.querySelectorAll('.slw-log-text'));
    const vr = vp.getBoundingClientRect();
    // What is drawn in the middle of the view: a row, not empty space.
    const middle = document.elementFromPoint(vr.left + Math.min(vr.width / 2, 300),
      vr.top + vr.height / 2);
    const coloured = Array.from(c.querySelectorAll(
      '.slw-log-text span[class*="slw-fg-"], .slw-log-text span[class*="slw-bg-"]'));
    return {
      rows: rows.length,
      row_heights: Array.from(heights),
      middle_is_row: !!(middle && middle.closest('.slw-log-row')),
      max_chars: texts.reduce((max, t) => Math.max(max, t.textContent.length), 0),
      raw_escapes: texts.some((t) => /[\u001b\u009b]/.test(t.textContent)),
      foreign_elements: c.querySelectorAll('.slw-log-text *:not(span)').length,
      coloured_spans: coloured.length,
      coloured_classes: Array.from(new Set(coloured.flatMap((s) => Array.from(s.classList)))),
      // The class colours take effect: a coloured span's colour differs from its line's.
      colour_applied: coloured.some((s) => {
        const own = getComputedStyle(s);
        const line = getComputedStyle(s.closest('.slw-log-text'));
        return own.color !== line.color || own.backgroundColor !== line.backgroundColor;
      }),
      top_seq: Number(c.dataset.topSeq),
    };
  });
}

let allRows = { rows: 0, heights: new Set(), max_chars: 0, raw_escapes: false, foreign: 0,
  coloured: 0, classes: new Set(), colour_applied: false, blank: [] };
function collect(where, seen) {
  allRows.rows = Math.max(allRows.rows, seen.rows);
  seen.row_heights.forEach((h) => allRows.heights.add(h));
  allRows.max_chars = Math.max(allRows.max_chars, seen.max_chars);
  allRows.raw_escapes ||= seen.raw_escapes;
  allRows.foreign += seen.foreign_elements;
  allRows.coloured += seen.coloured_spans;
  seen.coloured_classes.forEach((c) => allRows.classes.add(c));
  allRows.colour_applied ||= seen.colour_applied;
  if (!seen.middle_is_row) allRows.blank.push(where);
}

async function screenshot(page, name) {
  if (!options.screenshots) return;
  fs.mkdirSync(options.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(options.screenshots, name) });
}

/** Waits for `predicate(arg)` in the page; false (and a failure named `name`) on timeout. */
async function waitFor(page, name, predicate, arg, timeout = STEP_TIMEOUT) {
  try {
    const handle = await page.waitForFunction(predicate, arg, { polling: 'raf', timeout });
    return await handle.jsonValue();
  } catch (error) {
    const state = await page.evaluate(() => {
      const c = document.querySelector('.slw-log');
      return c ? JSON.stringify(c.dataset) : 'no .slw-log';
    }).catch(() => 'page gone');
    check(name, false, `not within ${timeout} ms; the log's data attributes: ${state}`);
    return false;
  }
}

/** Line `seq` is in the DOM, inside the view, and (with `target`) highlighted. */
function lineInView([seq, target]) {
  const c = document.querySelector('.slw-log');
  const row = c && c.querySelector(`.slw-log-row[data-seq="${seq}"]`);
  if (!row || (target && !row.classList.contains('slw-log-target'))) return false;
  const vr = c.querySelector('.slw-log-viewport').getBoundingClientRect();
  const r = row.getBoundingClientRect();
  return r.top >= vr.top - 1 && r.bottom <= vr.bottom + 1 ? performance.now() : false;
}

async function loadPage(page, url) {
  await page.goto(url, { waitUntil: 'commit', timeout: 30000 });
}

async function run(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  if (options.cookies.length) {
    const origin = new URL(options.url).origin;
    await context.addCookies(options.cookies.map((c) => ({ ...c, url: origin })));
  }
  await context.addInitScript(instrument);
  const page = await context.newPage();
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));
  const expected = options.expected;

  // --- load: all lines in, and the last one in view ---
  await loadPage(page, options.url);
  const firstRows = waitFor(page, 'first rows shown',
    () => (document.querySelector('.slw-log .slw-log-row') ? performance.now() : false),
    null, 60000);
  const loaded = await waitFor(page, 'all lines loaded and the last one in view', (n) => {
    const c = document.querySelector('.slw-log');
    if (!c || Number(c.dataset.lines) < n || c.dataset.bottomSeq !== c.dataset.lastSeq) return false;
    const seq = c.dataset.lastSeq;
    const row = c.querySelector(`.slw-log-row[data-seq="${seq}"]`);
    if (!row) return false;
    const vr = c.querySelector('.slw-log-viewport').getBoundingClientRect();
    const r = row.getBoundingClientRect();
    return r.top >= vr.top - 1 && r.bottom <= vr.bottom + 1 ? performance.now() : false;
  }, expected, 60000);
  figures.first_rows_ms = round(await firstRows);
  if (loaded === false) throw new Error('the log did not load; nothing more to check');
  figures.load_ms = round(loaded);
  check('load time', figures.load_ms <= options.maxLoadMs,
    `${figures.load_ms} ms, more than ${options.maxLoadMs} ms`);
  const atLoad = await snapshot(page);
  figures.lines_at_load = Number(atLoad.lines);
  const nav = await page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    return n ? { dom_content_loaded_ms: n.domContentLoadedEventEnd } : {};
  });
  Object.assign(figures, Object.fromEntries(Object.entries(nav).map(([k, v]) => [k, round(v)])));
  const afterLoad = await page.evaluate(() => performance.now());
  await screenshot(page, 'log-bottom.png');
  collect('bottom at load', await inspectRows(page));

  // --- follow ---
  const box = await page.locator(SEL.viewport).boundingBox();
  const centre = { x: box.x + Math.min(box.width / 2, 300), y: box.y + box.height / 2 };
  const following = async () => (await snapshot(page)).following === 'true';
  const pressed = async () => page.locator(SEL.follow).getAttribute('aria-pressed');
  const atBottom = () => waitFor(page, 'at the last line', () => {
    const c = document.querySelector('.slw-log');
    return c.dataset.bottomSeq === c.dataset.lastSeq;
  }, null, 3000);
  check('following at load', await following());
  check('follow button pressed at load', (await pressed()) === 'true');
  await page.mouse.move(centre.x, centre.y);
  await page.mouse.wheel(0, -600);
  check('wheel up stops following', await waitFor(page, 'wheel up stops following',
    () => document.querySelector('.slw-log').dataset.following === 'false', null, 3000));
  check('follow button released after scrolling up', (await pressed()) === 'false');
  await page.locator(SEL.follow).click();
  check('follow button follows again', await waitFor(page, 'follow button follows again',
    () => document.querySelector('.slw-log').dataset.following === 'true', null, 3000));
  check('follow button pressed again', (await pressed()) === 'true');
  check('following goes to the last line', await atBottom());
  await page.locator(SEL.viewport).focus();
  await page.keyboard.press('PageUp');
  check('PageUp stops following', await waitFor(page, 'PageUp stops following',
    () => document.querySelector('.slw-log').dataset.following === 'false', null, 3000));
  await page.keyboard.press('End');
  check('End follows again', await waitFor(page, 'End follows again',
    () => document.querySelector('.slw-log').dataset.following === 'true', null, 3000));
  check('End goes to the last line', await atBottom());
  // A running build's new lines keep the view at the bottom.
  const before = Number((await snapshot(page)).lines);
  await page.waitForTimeout(1000);
  const after = await snapshot(page);
  figures.live_lines_in_1s = Number(after.lines) - before;
  if (figures.live_lines_in_1s > 0) {
    check('new lines keep a following view at the bottom', await atBottom());
  }

  // --- scrolling: top, middle, bottom, then the wheel and keys across the log ---
  figures.scroll_ms = {};
  figures.answer_after_scroll_ms = {};
  for (const [where, fraction] of [['top', 0], ['middle', 0.5], ['bottom', 1]]) {
    const t0 = Date.now();
    await page.evaluate((f) => {
      const vp = document.querySelector('.slw-log .slw-log-viewport');
      vp.scrollTop = f * (vp.scrollHeight - vp.clientHeight);
    }, fraction);
    await twoFrames(page);
    figures.scroll_ms[where] = Date.now() - t0;
    const t1 = Date.now();
    await page.evaluate(() => 1);
    figures.answer_after_scroll_ms[where] = Date.now() - t1;
    check(`scrolled to the ${where} in time`, figures.scroll_ms[where] <= RESPONSIVE_MS,
      `${figures.scroll_ms[where]} ms`);
    check(`answers after scrolling to the ${where}`,
      figures.answer_after_scroll_ms[where] <= RESPONSIVE_MS,
      `${figures.answer_after_scroll_ms[where]} ms`);
    const seen = await inspectRows(page);
    collect(where, seen);
    if (where === 'middle') {
      const lines = Number((await snapshot(page)).lines);
      check('the middle shows the middle', Math.abs(seen.top_seq - lines / 2) < lines * 0.02,
        `top line ${seen.top_seq} of ${lines}`);
      await screenshot(page, 'log-middle.png');
    }
    if (where === 'top') check('the top shows line 1', seen.top_seq === 1, `top line ${seen.top_seq}`);
  }
  figures.wheel_max_frame_gap_ms = round(await longestFrameGap(page, async () => {
    await page.mouse.move(centre.x, centre.y);
    for (let i = 0; i < 40; i++) await page.mouse.wheel(0, -2500);
    await twoFrames(page);
  }));
  collect('after wheel', await inspectRows(page));
  figures.keys_max_frame_gap_ms = round(await longestFrameGap(page, async () => {
    await page.locator(SEL.viewport).focus();
    for (let i = 0; i < 20; i++) await page.keyboard.press('PageUp');
    await page.keyboard.press('Home');
    await twoFrames(page);
  }));
  collect('after keys', await inspectRows(page));
  await waitFor(page, 'Home goes to line 1',
    () => document.querySelector('.slw-log').dataset.topSeq === '1', null, 3000);

  // --- a link to a line ---
  const target = Math.floor(expected / 2);
  let t0 = await page.evaluate((seq) => {
    window.location.hash = `#L${seq}`;
    return performance.now();
  }, target);
  const shown = await waitFor(page, `#L${target} shows line ${target} highlighted`, lineInView,
    [target, true], 3000);
  if (shown !== false) figures.hash_link_ms = round(shown - t0);
  check('a line link stops following', !(await following()));
  await screenshot(page, 'log-target.png');
  collect('line link', await inspectRows(page));
  const other = target + 2;
  await page.locator(`.slw-log-row[data-seq="${other}"] .slw-log-num`).click();
  const moved = await waitFor(page, `clicking line ${other}'s number highlights it`, lineInView,
    [other, true], 3000);
  check('clicking a line number sets the address', page.url().endsWith(`#L${other}`), page.url());
  if (moved !== false) {
    check('one highlighted line', await page.locator('.slw-log-row.slw-log-target').count() === 1);
  }

  // --- colours, in light and dark mode ---
  if (options.colours && allRows.coloured === 0) {
    // Not in any place looked at so far: look from the top, a view at a time.
    await page.evaluate(() => { document.querySelector('.slw-log .slw-log-viewport').scrollTop = 0; });
    for (let i = 0; i < 50 && allRows.coloured === 0; i++) {
      await twoFrames(page);
      collect('colour search', await inspectRows(page));
      await page.evaluate(() => {
        const vp = document.querySelector('.slw-log .slw-log-viewport');
        vp.scrollTop += vp.clientHeight;
      });
    }
  }
  if (options.colours) {
    check('ANSI colours shown as classes', allRows.coloured > 0, 'no coloured span in view');
    check('ANSI colour classes take effect', allRows.colour_applied);
    const scheme = async (colorScheme) => {
      await page.emulateMedia({ colorScheme });
      await twoFrames(page);
      return page.evaluate(() => {
        const c = document.querySelector('.slw-log');
        const span = c.querySelector('.slw-log-text span[class*="slw-fg-"]');
        return {
          background: getComputedStyle(c).backgroundColor,
          text: getComputedStyle(c.querySelector('.slw-log-text')).color,
          colour: span ? `${span.className} ${getComputedStyle(span).color}` : null,
        };
      });
    };
    const light = await scheme('light');
    const dark = await scheme('dark');
    await screenshot(page, 'log-dark.png');
    await scheme('light');
    check('dark mode changes the log colours',
      light.background !== dark.background && light.text !== dark.text &&
      (light.colour === null || light.colour !== dark.colour));
    figures.colours = { light, dark };
  }

  // --- what the view drew throughout ---
  figures.rows_in_dom_max = allRows.rows;
  figures.row_heights = Array.from(allRows.heights);
  figures.max_chars_in_a_row = allRows.max_chars;
  figures.coloured_spans_seen = allRows.coloured;
  figures.colour_classes_seen = Array.from(allRows.classes).sort();
  check('only the rows in view are in the DOM', allRows.rows > 0 && allRows.rows < 1000,
    `${allRows.rows} rows`);
  check('rows all of one height', allRows.heights.size === 1, figures.row_heights.join(', '));
  check('long lines cut', allRows.max_chars <= 4001, `${allRows.max_chars} characters`);
  check('no escape sequence shown raw', !allRows.raw_escapes);
  check('log text is only text and spans', allRows.foreign === 0, `${allRows.foreign} elements`);
  check('no empty view after scrolling', allRows.blank.length === 0, allRows.blank.join(', '));

  const tasks = await page.evaluate(() => window.__check);
  figures.longtask_supported = tasks.longtaskSupported;
  const longest = (list) => round(list.reduce((max, t) => Math.max(max, t.duration), 0));
  figures.longest_task_ms = longest(tasks.longtasks);
  figures.longest_task_after_load_ms = longest(tasks.longtasks.filter((t) => t.start >= afterLoad));
  figures.long_tasks_after_load = tasks.longtasks.filter((t) => t.start >= afterLoad).length;
  check('no long task after load', figures.longest_task_after_load_ms <= RESPONSIVE_MS,
    `${figures.longest_task_after_load_ms} ms`);

  // --- Save: every line loaded, as the view shows it, without colours ---
  // After the long tasks are counted: joining the lines is one task, on a click.
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 30000 }),
    page.locator(SEL.save).click(),
  ]);
  const savedPath = path.join(os.tmpdir(), `slipway-log-check-${process.pid}.txt`);
  await download.saveAs(savedPath);
  const savedText = fs.readFileSync(savedPath, 'utf8');
  fs.unlinkSync(savedPath);
  const saved = savedText.split('\n');
  if (saved[saved.length - 1] === '') saved.pop();
  figures.saved = { file: download.suggestedFilename(), lines: saved.length, bytes: savedText.length };
  const held = await page.evaluate(() => Number(document.querySelector('.slw-log').dataset.lines));
  check('Save writes every line loaded', saved.length === held && held >= expected,
    `${saved.length} lines saved, ${held} loaded`);
  check('the saved log has no escape sequence', !savedText.includes('\u001b'));
  const shownText = await page.evaluate((seq) => {
    const vp = document.querySelector('.slw-log .slw-log-viewport');
    vp.scrollTop = 0;
    return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => {
      const row = document.querySelector(`.slw-log-row[data-seq="${seq}"] .slw-log-text`);
      resolve(row ? row.textContent : null);
    })));
  }, 1);
  check('the saved first line is the one shown', shownText !== null && saved[0] === shownText,
    `${JSON.stringify(saved[0])} saved, ${JSON.stringify(shownText)} shown`);

  // --- a link to a line, opened afresh: the view waits for that line instead of following ---
  await page.goto('about:blank');
  const fresh = new URL(options.url);
  fresh.hash = `L${target}`;
  await loadPage(page, fresh.href);
  const opened = await waitFor(page, `opening #L${target} shows line ${target}`, lineInView,
    [target, true], 30000);
  if (opened !== false) figures.hash_at_load_ms = round(opened);
  check('opening a line link does not follow', !(await following()));
  await context.close();
}

let browser;
try {
  browser = await launch();
  figures.browser = `chromium ${browser.version()}`;
  await run(browser);
} catch (error) {
  failures.push(`check stopped: ${String(error.message).split('\n')[0]}`);
} finally {
  if (browser) await browser.close();
}
figures.failures = failures;
figures.ok = failures.length === 0;
console.log(JSON.stringify(figures, null, 2));
process.exit(figures.ok ? 0 : 1);
