/**
 * Starts the browser of Slipway's end-to-end tests: Debian's Chromium (the `chromium` package,
 * which scripts/bootstrap installs) driven by playwright-core, so no browser is downloaded.
 *
 * The flags keep Chromium quiet on a machine without internet: left alone it reaches out for
 * updates, sync, field trials and QUIC probes, each of which would wait on a timeout.
 */
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.SLIPWAY_CHROMIUM || '/usr/bin/chromium';

/** A headless Chromium; close it with `browser.close()`. */
export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
