// Exchange's own session behind the gateway, in Chromium: on a shared computer the next user
// never inherits the previous user's open Exchange session (after a sign-out, or after the
// session's idle timeout), and an open OWA tab whose script keeps polling does not keep the
// session alive: its poll gets 440 and the next page load signs in again.
//
// The Exchange stand-in (lib/exchange.mjs) is on forms authentication as far as identity goes:
// OWA's logon form sets `cadata` naming the user, and /owa/ shows the mailbox of whoever
// `cadata` names. The Rust suites (tests/exchange_cookies.rs, tests/idle_background.rs) prove
// the rules with a clock under the test's control; these scenarios prove them in a browser.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { startExchange } from './lib/exchange.mjs';
import { scenario, signInAtProvider } from './lib/scenario.mjs';
import {
  clientFor, freePort, gatewayBinary, randomSecret, sleep, startGateway, startProvider,
} from './lib/harness.mjs';

const CLIENT = '7d6c5b4a-3e2f-4a1b-8c9d-0e1f2a3b4c5d';
const SESSION_COOKIE = '__Host-mfagw';
const BINDING_COOKIE = '__Host-mfagw-exchange';
const ALICE = 'alice@contoso-e2e.example';
/** The short gateway's idle timeout. Idle timeouts are counted in whole seconds. */
const IDLE_SECONDS = 6;
const POLL = '/owa/ev.owa2?ns=PendingRequest&ev=PendingNotificationRequest&UA=0&cid=e2e&brwnm=chrome';

const env = {};

before(async () => {
  console.log(`# gateway binary: ${gatewayBinary()}`);
  env.exchange = await startExchange();
  const [port, shortPort] = [await freePort(), await freePort()];
  const secret = randomSecret();
  env.provider = await startProvider({
    name: 'provider-exchange-session',
    clients: [clientFor({
      clientId: CLIENT, secret, method: 'client_secret_post', gatewayPorts: [port, shortPort],
    })],
  });
  const common = {
    issuer: env.provider.issuer, exchangePort: env.exchange.port, clientId: CLIENT, secret, method: 'post',
  };
  // G: the usual session settings.
  env.G = await startGateway({
    ...common, name: 'gateway-exchange-session', port, sessionKeys: [randomSecret()],
  });
  // S: a session idle for a few seconds is over.
  env.S = await startGateway({
    ...common,
    name: 'gateway-short-idle',
    port: shortPort,
    sessionKeys: [randomSecret()],
    idleTimeout: `${IDLE_SECONDS}s`,
  });
});

after(async () => {
  await Promise.all([env.G?.stop(), env.S?.stop()]);
  await env.provider?.stop();
  await env.exchange?.close();
});

// ─── helpers ────────────────────────────────────────────────────────────────────────────────

/** Opens `url` without a session and signs in at the provider; returns when back on `url`. */
async function signIn(page, url, account) {
  await page.goto(url);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), `expected the provider's sign-in page, got ${page.url()}`);
  await signInAtProvider(page, { account, mfa: true, landOn: url });
}

/** OWA's logon form, submitted from OWA's page as the user would; lands on the mailbox. */
async function owaLogon(page, origin, user) {
  await page.evaluate((username) => {
    const form = document.createElement('form');
    form.method = 'POST';
    form.action = '/owa/auth.owa';
    const fields = {
      destination: `${location.origin}/owa/`, flags: '4', forcedownlevel: '0', username, password: 'P@ssw0rd', isUtf8: '1',
    };
    for (const [name, value] of Object.entries(fields)) {
      const input = document.createElement('input');
      input.type = 'hidden';
      input.name = name;
      input.value = value;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
  }, user);
  await page.waitForURL((u) => u.href === `${origin}/owa/`);
}

const owner = (page) => page.textContent('#mailbox-owner');
const cookieNames = async (context) => (await context.cookies()).map((c) => c.name);

/** The provider's own session ends too (as it would on a shared computer after its sign-out
 * or its own timeout), so that the next user is asked which account to use. */
const endProviderSession = (context) => context.clearCookies({ name: /^e2eop_/ });

/** No request Exchange received since `since` carried this `cadata`. */
function assertExchangeNeverSaw(since, cadata, what) {
  const carried = env.exchange.browserRequests(since).filter((r) => (r.headers.cookie || '').includes(`cadata=${cadata}`));
  assert.deepEqual(carried.map((r) => r.url), [], `${what}: the previous user's cadata reached Exchange`);
}

// ─── scenarios ──────────────────────────────────────────────────────────────────────────────

scenario("after A signs out, B signs in in the same browser and does not reach A's mailbox", async ({ browser }) => {
  const { G } = env;
  const { page, context } = await browser();
  await signIn(page, `${G.origin}/owa/`, 'alice');
  await owaLogon(page, G.origin, ALICE);
  assert.equal(await owner(page), ALICE);
  const names = await cookieNames(context);
  for (const n of [SESSION_COOKIE, BINDING_COOKIE, 'cadata', 'X-OWA-CANARY']) assert.ok(names.includes(n), `${n} while A works`);
  const aliceCadata = (await context.cookies()).find((c) => c.name === 'cadata').value;

  // A signs out of the gateway (not through OWA, whose own logoff would clear Exchange's cookies
  // itself): the gateway must take Exchange's session away.
  await page.goto(`${G.origin}/_gateway/logout`);
  await page.waitForURL((u) => u.href === `${G.origin}/_gateway/signed-out`);
  const left = await cookieNames(context);
  for (const n of [SESSION_COOKIE, BINDING_COOKIE, 'cadata', 'X-OWA-CANARY']) assert.ok(!left.includes(n), `${n} left after sign-out: ${left}`);

  const since = Date.now();
  await signIn(page, `${G.origin}/owa/`, 'bob');
  assert.equal(await owner(page), 'nobody', "B reaches Exchange's logon state, not A's mailbox");
  assertExchangeNeverSaw(since, aliceCadata, 'after the sign-out');
});

scenario("after A's session idles out, B signs in in the same browser and does not reach A's mailbox", async ({ browser }) => {
  const { S } = env;
  const { page, context } = await browser();
  await signIn(page, `${S.origin}/owa/`, 'alice');
  await owaLogon(page, S.origin, ALICE);
  assert.equal(await owner(page), ALICE);
  const aliceCadata = (await context.cookies()).find((c) => c.name === 'cadata').value;

  // A walks away; the gateway session's idle timeout passes. B sits down.
  await sleep((IDLE_SECONDS + 1) * 1000);
  await endProviderSession(context);
  const since = Date.now();
  await page.goto(`${S.origin}/owa/`);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), page.url());
  const left = await cookieNames(context);
  for (const n of [SESSION_COOKIE, 'cadata', 'X-OWA-CANARY']) assert.ok(!left.includes(n), `${n} outlived the idle session: ${left}`);
  await signInAtProvider(page, { account: 'bob', mfa: true, landOn: `${S.origin}/owa/` });
  assert.equal(await owner(page), 'nobody', "B reaches Exchange's logon state, not A's mailbox");
  assertExchangeNeverSaw(since, aliceCadata, 'after the idle timeout');
});

scenario('an open OWA tab that keeps polling does not keep the session alive: 440, then sign in again', async ({ browser }) => {
  const { S, provider } = env;
  const { page, context } = await browser();
  // When the callback that starts the session was sent: the session's idle clock starts there.
  let signedInAt = null;
  page.on('request', (r) => {
    if (r.url().startsWith(`${S.origin}/_gateway/callback`)) signedInAt = Date.now();
  });
  await signIn(page, `${S.origin}/owa/`, 'alice');
  assert.ok(signedInAt, 'the callback was seen');
  // OWA's notification channel, as its script runs it: one poll after another.
  await page.evaluate((poll) => {
    window.polls = [];
    const next = async () => {
      const reply = await fetch(poll, { headers: { 'x-owa-canary': 'e2e' } });
      window.polls.push({ status: reply.status, redirected: reply.redirected, at: Date.now() });
      if (reply.status !== 440) setTimeout(next, 400);
    };
    next();
  }, POLL);
  await page.waitForFunction(() => window.polls.some((p) => p.status === 440), null, {
    timeout: (IDLE_SECONDS + 10) * 1000,
  });
  const polls = await page.evaluate(() => window.polls);
  const last = polls[polls.length - 1];
  assert.equal(last.status, 440, JSON.stringify(polls));
  assert.ok(polls.length > 3, `the tab polled while the session was live: ${JSON.stringify(polls)}`);
  assert.ok(polls.slice(0, -1).every((p) => p.status === 200 && !p.redirected), JSON.stringify(polls));
  assert.ok(!last.redirected, 'a script gets 440, never a redirect to sign in');
  // Times are whole seconds at the gateway: the deadline falls between IDLE_SECONDS - 1 and
  // IDLE_SECONDS after the callback.
  assert.ok(
    last.at - signedInAt >= (IDLE_SECONDS - 1) * 1000,
    `the polls did not end the session early: 440 after ${last.at - signedInAt} ms`,
  );
  // The polls before it never moved the deadline: the 440 came at the idle timeout, not later.
  assert.ok(last.at - signedInAt < (IDLE_SECONDS + 4) * 1000, `440 after ${last.at - signedInAt} ms`);

  // The user comes back and reloads: the gateway asks for a sign-in.
  await endProviderSession(context);
  await page.reload();
  assert.ok(page.url().startsWith(`${provider.base}/interaction/`), page.url());
  await page.waitForSelector('#signin-form');
});
