// What every browser scenario shares: the test wrapper that closes its browsers and photographs
// them on failure, and the provider's sign-in page.

import path from 'node:path';
import { test } from 'node:test';

import { OUT, launchBrowser } from './harness.mjs';

/** A test with browsers that are closed afterwards and photographed when the test fails. */
export function scenario(name, optionsOrFn, maybeFn) {
  const [options, fn] = maybeFn ? [optionsOrFn, maybeFn] : [{}, optionsOrFn];
  test(name, { timeout: 120000, ...options }, async () => {
    const browsers = [];
    const browser = async (extraArgs = []) => {
      const b = await launchBrowser(extraArgs);
      browsers.push(b);
      return b;
    };
    try {
      await fn({ browser });
    } catch (error) {
      const slug = name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60);
      await Promise.all(browsers.map((b, i) => b.page.screenshot({
        path: path.join(OUT, `failed-${slug}-${i}.png`),
      }).catch(() => {})));
      throw error;
    } finally {
      await Promise.all(browsers.map((b) => b.close()));
    }
  });
}

/** On the provider's sign-in page: pick the account, tick "MFA completed" or not, sign in. */
export async function signInAtProvider(page, { account = 'alice', mfa = true, landOn }) {
  await page.waitForSelector('#signin-form');
  await page.check(`#account-${account}`);
  if (mfa) await page.check('#mfa');
  else await page.uncheck('#mfa');
  await page.click('#sign-in');
  if (landOn) await page.waitForURL((u) => u.href === landOn);
}
