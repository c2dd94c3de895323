// Browser end-to-end suite of mfa-gateway: headless Chromium (Debian's, driven by
// playwright-core) signs in through the gateway at an Entra-like oidc-provider and reaches a
// sample Exchange that records every request it receives.
//
// Run with `npm test` (see README.md): the gateway binary must be built first.
//
// Everything listens on 127.0.0.1 with free ports. Cookies on 127.0.0.1 are shared by all
// ports, as they would be for two gateways behind one load balancer name: gateways A and B
// (same session keys) see the same session cookie.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { after, before } from 'node:test';

import { startExchange } from './lib/exchange.mjs';
import { scenario, signInAtProvider } from './lib/scenario.mjs';
import {
  ADMINS_GROUP, OUT, TENANT, clientFor, freePort, gatewayBinary, randomSecret,
  sleep, startGateway, startProvider,
} from './lib/harness.mjs';

const CLIENT_A = '0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f'; // client_secret_post
const CLIENT_B = '9b8a7c6d-5e4f-4a3b-9c2d-1e0f2a3b4c5d'; // client_secret_basic
const ECP_STEP_UP_SECONDS = 4;
const SESSION_COOKIE = '__Host-mfagw';

const env = {};

before(async () => {
  console.log(`# gateway binary: ${gatewayBinary()}`);
  env.exchange = await startExchange();
  const [portA, portB, portC] = [await freePort(), await freePort(), await freePort()];
  env.secretA = randomSecret();
  env.secretB = randomSecret();
  env.provider = await startProvider({
    name: 'provider',
    clients: [
      clientFor({
        clientId: CLIENT_A, secret: env.secretA, method: 'client_secret_post', gatewayPorts: [portA, portC],
      }),
      clientFor({
        clientId: CLIENT_B, secret: env.secretB, method: 'client_secret_basic', gatewayPorts: [portB],
      }),
    ],
  });
  env.sessionKeys = [randomSecret()];
  env.portC = portC;
  const common = { issuer: env.provider.issuer, exchangePort: env.exchange.port, sessionKeys: env.sessionKeys };
  // A: the Exchange admin center only for the admins group.
  env.A = await startGateway({
    ...common,
    name: 'gateway-a',
    port: portA,
    clientId: CLIENT_A,
    secret: env.secretA,
    method: 'post',
    ecp: `groups_any_of = ["${ADMINS_GROUP}"]`,
  });
  // B: same session keys; the admin center wants a sign-in at most a few seconds old (step-up).
  env.B = await startGateway({
    ...common,
    name: 'gateway-b',
    port: portB,
    clientId: CLIENT_B,
    secret: env.secretB,
    method: 'basic',
    ecp: `max_auth_age = "${ECP_STEP_UP_SECONDS}s"`,
  });
});

after(async () => {
  await Promise.all([env.A?.stop(), env.B?.stop()]);
  await env.provider?.stop();
  await env.exchange?.close();
});

// ─── helpers ────────────────────────────────────────────────────────────────────────────────

const tag = () => crypto.randomBytes(6).toString('hex');

/** Authorization requests the provider received since `since`, as URLSearchParams. */
async function authorizationRequests(provider, since) {
  return (await provider.requests())
    .filter((r) => r.at >= since && r.method === 'GET' && r.url.startsWith(`/${TENANT}/auth?`))
    .map((r) => new URL(r.url, provider.base).searchParams);
}

async function providerRequests(provider, since, prefix) {
  return (await provider.requests()).filter((r) => r.at >= since && r.url.startsWith(prefix));
}

async function tokensSince(provider, since, clientId) {
  return (await provider.tokens()).filter((t) => t.at >= since && (!clientId || t.client_id === clientId));
}

/** Opens `url` on a gateway without a session and signs in; returns when back on `url`. */
async function signIn(page, url, options = {}) {
  await page.goto(url);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), `expected the provider's sign-in page, got ${page.url()}`);
  await signInAtProvider(page, { ...options, landOn: url });
}

const sessionCookie = async (context) => (await context.cookies()).find((c) => c.name === SESSION_COOKIE);

/** A page load the way a browser makes it, with the context's cookies, without following redirects. */
const navigateNoFollow = (context, url) => context.request.get(url, {
  maxRedirects: 0,
  headers: { accept: 'text/html,application/xhtml+xml', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' },
});

// ─── scenarios ──────────────────────────────────────────────────────────────────────────────

scenario('sign-in with MFA lands on the original URL with its query', async ({ browser }) => {
  const { A, provider, exchange } = env;
  const since = Date.now();
  const { page } = await browser();
  const callbacks = [];
  page.on('request', (r) => {
    if (r.url().startsWith(`${A.origin}/_gateway/callback`)) callbacks.push(r.method());
  });
  const id = tag();
  const target = `${A.origin}/owa/?ae=Folder&t=IPF.Note&id=LgAAAAB%2Fx%3D%3D&e2e=${id}`;
  await page.goto(target);
  assert.ok(page.url().startsWith(`${provider.base}/interaction/`), page.url());
  await page.waitForSelector('#signin-form');
  await page.screenshot({ path: path.join(OUT, 'sign-in-redirect.png') });

  const [auth] = await authorizationRequests(provider, since);
  assert.ok(auth, 'the gateway sent the browser to the authorization endpoint');
  assert.equal(auth.get('client_id'), CLIENT_A);
  assert.equal(auth.get('response_type'), 'code');
  assert.equal(auth.get('response_mode'), 'form_post');
  assert.equal(auth.get('redirect_uri'), `${A.origin}/_gateway/callback`);
  assert.equal(auth.get('code_challenge_method'), 'S256');
  assert.ok(auth.get('code_challenge') && auth.get('state') && auth.get('nonce'));
  assert.ok(auth.get('scope').split(' ').includes('openid'));
  assert.equal(auth.get('prompt'), null, 'a first sign-in does not force prompt=login');

  await signInAtProvider(page, { account: 'alice', mfa: true, landOn: target });
  assert.equal(page.url(), target);
  assert.equal(await page.textContent('#owa-inbox'), 'Inbox');
  assert.equal(await page.textContent('#received'), `GET ${target.slice(A.origin.length)}`);
  await page.screenshot({ path: path.join(OUT, 'owa-landing.png') });
  assert.deepEqual(callbacks, ['POST'], 'the code came back by form_post');

  const forwarded = exchange.browserRequests(since);
  assert.deepEqual(forwarded.map((r) => `${r.method} ${r.url}`), [`GET ${target.slice(A.origin.length)}`],
    'Exchange saw exactly the original request, once, after the sign-in');

  // The code exchange used client_secret_post: no Authorization header at the token endpoint.
  const tokenCalls = await providerRequests(provider, since, `/${TENANT}/token`);
  assert.equal(tokenCalls.length, 1);
  assert.equal(tokenCalls[0].headers.authorization, undefined);

  const [issued] = await tokensSince(provider, since, CLIENT_A);
  assert.equal(issued.header.alg, 'RS256');
  const claims = issued.payload;
  assert.equal(claims.iss, provider.issuer);
  assert.equal(claims.tid, TENANT);
  assert.equal(claims.oid, '11111111-aaaa-4aaa-8aaa-000000000001');
  assert.equal(claims.upn, 'alice@contoso-e2e.example');
  assert.ok(claims.groups.includes(ADMINS_GROUP));
  assert.ok(claims.sid, 'sid');
  assert.equal(typeof claims.auth_time, 'number');
  assert.deepEqual(claims.amr, ['pwd', 'mfa']);
});

scenario('sign-in without MFA is refused and Exchange is never reached', async ({ browser }) => {
  const { A, provider, exchange } = env;
  const since = Date.now();
  const { page, context } = await browser();
  const target = `${A.origin}/owa/?path=/mail/inbox&e2e=${tag()}`;
  await page.goto(target);
  const refused = page.waitForResponse((r) => r.url() === `${A.origin}/_gateway/callback`);
  await signInAtProvider(page, { account: 'alice', mfa: false });
  const response = await refused;
  await page.waitForLoadState('load');
  assert.equal(response.status(), 403);
  assert.equal(await page.title(), 'Multifactor authentication required');
  const text = await page.textContent('body');
  assert.match(text, /This sign-in did not include multifactor authentication/);
  assert.doesNotMatch(text, /eyJ/, 'no token on the page');
  await page.screenshot({ path: path.join(OUT, 'mfa-refused.png'), fullPage: true });
  // "Sign in again" starts a fresh sign-in that returns to the page that was asked for.
  assert.equal(
    await page.getAttribute('a', 'href'),
    `/_gateway/sign-in?return=${encodeURIComponent(target.slice(A.origin.length))}`,
  );

  const [issued] = await tokensSince(provider, since, CLIENT_A);
  assert.deepEqual(issued.payload.amr, ['pwd'], 'the provider did issue a password-only token');
  assert.equal(await sessionCookie(context), undefined, 'no session cookie');
  assert.deepEqual(exchange.browserRequests(since), [], 'Exchange never saw a request');
});

scenario('ECP group rule: a user outside the group gets 403 and /ecp never reaches Exchange', async ({ browser }) => {
  const { A, exchange } = env;
  const since = Date.now();
  const bob = await browser();
  const ecp = `${A.origin}/ecp/?e2e=${tag()}`;
  await bob.page.goto(ecp);
  const denied = bob.page.waitForResponse((r) => r.url() === ecp && r.request().isNavigationRequest());
  await signInAtProvider(bob.page, { account: 'bob', mfa: true, landOn: ecp });
  assert.equal((await denied).status(), 403);
  assert.match(await bob.page.textContent('h1'), /You do not have access to this page/);
  assert.deepEqual(exchange.browserRequests(since).filter((r) => /^\/ecp/i.test(r.url)), [],
    'no /ecp request reached Exchange');

  // Bob is signed in: OWA, which has no group rule, works.
  const owa = `${A.origin}/owa/?e2e=${tag()}`;
  await bob.page.goto(owa);
  assert.equal(bob.page.url(), owa);
  assert.equal(await bob.page.textContent('#owa-inbox'), 'Inbox');

  // Alice is in the group: the same route lets her through.
  const alice = await browser();
  await signIn(alice.page, ecp, { account: 'alice', mfa: true });
  assert.equal(await alice.page.textContent('#ecp-home'), 'Exchange admin center');
  assert.equal(exchange.browserRequests(since).filter((r) => /^\/ecp/i.test(r.url)).length, 1);
});

scenario('ECP step-up: a sign-in older than the route allows signs in again with prompt=login', async ({ browser }) => {
  const { B, provider, exchange } = env;
  const { page } = await browser();
  const since = Date.now();
  const first = `${B.origin}/ecp/?e2e=${tag()}`;
  await signIn(page, first, { account: 'alice', mfa: true });
  const signedInAt = Date.now();
  assert.equal(await page.textContent('#ecp-home'), 'Exchange admin center');

  // client_secret_basic at the token endpoint for gateway B.
  const tokenCalls = await providerRequests(provider, since, `/${TENANT}/token`);
  assert.equal(tokenCalls.length, 1);
  assert.match(tokenCalls[0].headers.authorization || '', /^Basic /);

  // Let the sign-in grow older than the route's max_auth_age (auth_time has whole seconds).
  await sleep(Math.max(0, signedInAt + (ECP_STEP_UP_SECONDS + 1.5) * 1000 - Date.now()));

  // OWA keeps the general 12h rule: no new sign-in there.
  const stepUpSince = Date.now();
  const owa = `${B.origin}/owa/?e2e=${tag()}`;
  await page.goto(owa);
  assert.equal(page.url(), owa);
  assert.deepEqual(await authorizationRequests(provider, stepUpSince), []);

  const second = `${B.origin}/ecp/?e2e=${tag()}`;
  await page.goto(second);
  assert.ok(page.url().startsWith(`${provider.base}/interaction/`), `step-up goes to the provider: ${page.url()}`);
  await page.waitForSelector('#reauth');
  const [auth] = await authorizationRequests(provider, stepUpSince);
  assert.equal(auth.get('prompt'), 'login');
  assert.equal(auth.get('max_age'), String(ECP_STEP_UP_SECONDS));
  assert.deepEqual(exchange.browserRequests(stepUpSince).filter((r) => r.url.startsWith('/ecp')), [],
    'the stale session did not reach /ecp');

  await signInAtProvider(page, { account: 'alice', mfa: true, landOn: second });
  assert.equal(await page.textContent('#ecp-home'), 'Exchange admin center');
  assert.equal(await page.textContent('#received'), `GET ${second.slice(B.origin.length)}`);
  const tokens = await tokensSince(provider, since, CLIENT_B);
  assert.equal(tokens.length, 2);
  assert.ok(tokens[1].payload.auth_time > tokens[0].payload.auth_time, 'a fresh authentication');
});

scenario('XHR without a session gets 401/440 and no redirect', async ({ browser }) => {
  const { A, provider, exchange } = env;
  const since = Date.now();
  const { page } = await browser();
  const id = tag();
  // A page of the gateway's origin that needs no session: the public health check.
  await page.goto(`${A.origin}/owa/healthcheck.htm`);
  const calls = (marker) => page.evaluate(async (m) => {
    const summary = async (p) => {
      try {
        const r = await p;
        return {
          status: r.status, statusText: r.statusText, redirected: r.redirected, url: r.url, body: await r.text(),
        };
      } catch (e) {
        return { error: String(e) };
      }
    };
    const xhr = () => new Promise((resolve) => {
      const x = new XMLHttpRequest();
      x.open('GET', `/owa/service.svc?action=GetMailboxRegionalConfiguration&e2e=${m}`);
      x.setRequestHeader('X-Requested-With', 'XMLHttpRequest');
      x.onloadend = () => resolve({ status: x.status, url: x.responseURL });
      x.send();
    });
    return {
      post: await summary(fetch(`/owa/service.svc?action=GetFolder&e2e=${m}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json; charset=utf-8', action: 'GetFolder' },
        body: '{"__type":"GetFolderJsonRequest:#Exchange"}',
      })),
      get: await summary(fetch(`/owa/service.svc?action=GetFolder&e2e=${m}`)),
      xhr: await xhr(),
      ecp: await summary(fetch(`/ecp/DDI/DDIService.svc/GetList?e2e=${m}`, { method: 'POST', body: '{}' })),
    };
  }, marker);

  const out = await calls(id);
  assert.equal(out.post.status, 440, JSON.stringify(out.post));
  assert.equal(out.post.statusText, 'Login Time-out');
  assert.equal(out.post.redirected, false);
  assert.equal(out.get.status, 440, JSON.stringify(out.get));
  assert.equal(out.get.redirected, false);
  assert.equal(out.xhr.status, 440);
  assert.equal(out.xhr.url, `${A.origin}/owa/service.svc?action=GetMailboxRegionalConfiguration&e2e=${id}`);
  assert.equal(out.ecp.status, 401, JSON.stringify(out.ecp));
  assert.equal(out.ecp.redirected, false);
  assert.deepEqual(exchange.browserRequests(since), [], 'nothing reached Exchange');
  assert.deepEqual(await authorizationRequests(provider, since), [], 'no sign-in was started');

  // Once signed in, the same calls reach Exchange's XHR endpoint.
  await signIn(page, `${A.origin}/owa/?e2e=${id}`, { account: 'alice', mfa: true });
  const signedIn = await calls(tag());
  assert.equal(signedIn.post.status, 200);
  assert.deepEqual(JSON.parse(signedIn.post.body), { exchange: true, action: 'GetFolder' });
  assert.equal(signedIn.xhr.status, 200);
});

scenario("OWA logoff ends the session and reaches the provider's end-session endpoint", async ({ browser }) => {
  const { A, provider, exchange } = env;
  const { page, context } = await browser();
  await signIn(page, `${A.origin}/owa/?e2e=${tag()}`, { account: 'alice', mfa: true });
  const names = (await context.cookies()).map((c) => c.name);
  for (const n of [SESSION_COOKIE, 'cadata', 'X-OWA-CANARY']) assert.ok(names.includes(n), `${n} before logoff`);
  const saved = await sessionCookie(context);

  const since = Date.now();
  await page.goto(`${A.origin}/owa/logoff.owa`);
  await page.waitForURL((u) => u.href === `${A.origin}/_gateway/signed-out`);
  assert.equal(await page.textContent('h1'), 'You have signed out');

  const endSession = await providerRequests(provider, since, `/${TENANT}/session/end`);
  assert.ok(endSession.length >= 2, 'end-session request and its confirmation');
  const params = new URL(endSession[0].url, provider.base).searchParams;
  assert.equal(params.get('post_logout_redirect_uri'), `${A.origin}/_gateway/signed-out`);
  assert.equal(params.get('client_id'), CLIENT_A);
  assert.ok(endSession.some((r) => r.method === 'POST' && r.url.startsWith(`/${TENANT}/session/end/confirm`)));

  const logoff = exchange.browserRequests(since).filter((r) => r.url === '/owa/logoff.owa');
  assert.equal(logoff.length, 1, 'Exchange got its logoff request to clear its own cookies');
  const left = (await context.cookies()).map((c) => c.name);
  for (const n of [SESSION_COOKIE, 'cadata', 'X-OWA-CANARY']) assert.ok(!left.includes(n), `${n} cleared`);

  // The old cookie, replayed, opens nothing: the session was revoked, not only forgotten.
  await context.addCookies([saved]);
  const replay = await navigateNoFollow(context, `${A.origin}/owa/?e2e=${tag()}`);
  assert.equal(replay.status(), 302);
  assert.ok(replay.headers().location.startsWith(`${provider.base}/${TENANT}/auth?`), replay.headers().location);
  await context.clearCookies({ name: SESSION_COOKIE });

  // The provider's session ended too: the next visit asks for an account again.
  const again = `${A.origin}/owa/?e2e=${tag()}`;
  await page.goto(again);
  assert.ok(page.url().startsWith(`${provider.base}/interaction/`), page.url());
  await page.waitForSelector('#signin-form');
  assert.deepEqual(exchange.browserRequests(since).filter((r) => r.url !== '/owa/logoff.owa'), []);
});

scenario('front-channel logout by sid ends the session', async ({ browser }) => {
  const { A, provider, exchange } = env;
  const { page, context } = await browser();
  const since = Date.now();
  await signIn(page, `${A.origin}/owa/?e2e=${tag()}`, { account: 'bob', mfa: true });
  const [issued] = await tokensSince(provider, since, CLIENT_A);
  const { sid } = issued.payload;
  assert.ok(sid);

  // As Entra does it: only ?sid=, and without the browser's cookies (third-party cookie blocking).
  const r = await fetch(`${A.origin}/_gateway/frontchannel-logout?sid=${encodeURIComponent(sid)}`);
  assert.equal(r.status, 200);
  assert.match(await r.text(), /You have been signed out/);

  const revokedAt = Date.now();
  assert.ok(await sessionCookie(context), 'the browser still holds its session cookie');
  const xhr = await page.evaluate(async () => (await fetch('/owa/service.svc?action=GetFolder', { method: 'POST' })).status);
  assert.equal(xhr, 440);
  const nav = await navigateNoFollow(context, `${A.origin}/owa/?e2e=${tag()}`);
  assert.equal(nav.status(), 302);
  assert.ok(nav.headers().location.startsWith(`${provider.base}/${TENANT}/auth?`));
  assert.deepEqual(exchange.browserRequests(revokedAt), [], 'the revoked session reached nothing');

  // A sid the gateway never saw changes nothing for others; a missing sid is a 400.
  assert.equal((await fetch(`${A.origin}/_gateway/frontchannel-logout`)).status, 400);
});

scenario('a session created on one gateway works on a second one with the same keys', async ({ browser }) => {
  const { A, B, provider, exchange } = env;
  const { page, context } = await browser();
  await signIn(page, `${A.origin}/owa/?e2e=${tag()}`, { account: 'alice', mfa: true });

  const since = Date.now();
  const onB = `${B.origin}/owa/?e2e=${tag()}`;
  await page.goto(onB);
  assert.equal(page.url(), onB, 'gateway B let the session of gateway A in');
  assert.equal(await page.textContent('#received'), `GET ${onB.slice(B.origin.length)}`);
  assert.deepEqual(await authorizationRequests(provider, since), [], 'no new sign-in');
  assert.equal(exchange.browserRequests(since).length, 1);

  // Control: a gateway with other session keys cannot open that cookie and asks for a sign-in.
  const C = await startGateway({
    name: 'gateway-c',
    port: env.portC,
    issuer: provider.issuer,
    clientId: CLIENT_A,
    secret: env.secretA,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: exchange.port,
  });
  try {
    const onC = await navigateNoFollow(context, `${C.origin}/owa/?e2e=${tag()}`);
    assert.equal(onC.status(), 302);
    assert.ok(onC.headers().location.startsWith(`${provider.base}/${TENANT}/auth?`));
  } finally {
    await C.stop();
  }
});

scenario('provider key rotation: the gateway refetches keys for the unknown kid and sign-in still works', async ({ browser }) => {
  const { A, provider } = env;
  const before = await browser();
  await signIn(before.page, `${A.origin}/owa/?e2e=${tag()}`, { account: 'alice', mfa: true });
  const [oldKid] = await provider.keyIds();

  const since = Date.now();
  const rotated = await provider.rotate();
  assert.equal(rotated[1], oldKid);
  assert.notEqual(rotated[0], oldKid);
  assert.deepEqual((await provider.jwks()).keys.map((k) => k.kid), rotated);

  const fresh = await browser();
  const target = `${A.origin}/owa/?e2e=${tag()}`;
  await signIn(fresh.page, target, { account: 'bob', mfa: true });
  assert.equal(await fresh.page.textContent('#owa-inbox'), 'Inbox');
  const [issued] = await tokensSince(provider, since, CLIENT_A);
  assert.equal(issued.header.kid, rotated[0], 'signed with the new key');
  // The gateway knew only the old key: it fetched the key set again after this token was issued.
  const refetches = await providerRequests(provider, issued.at, `/${TENANT}/jwks`);
  assert.ok(refetches.length >= 1, 'the gateway fetched the keys again for the unknown kid');

  // The session made before the rotation is the gateway's own: it goes on working.
  const old = `${A.origin}/owa/?e2e=${tag()}`;
  await before.page.goto(old);
  assert.equal(before.page.url(), old);
});

scenario('provider down: a live session keeps working, a new sign-in gets the 503 page', async ({ browser }) => {
  const { exchange } = env;
  // A provider and gateway of their own, so that stopping the provider touches no other test.
  const port = await freePort();
  const secret = randomSecret();
  const provider = await startProvider({
    name: 'provider-down',
    clients: [clientFor({
      clientId: CLIENT_A, secret, method: 'client_secret_post', gatewayPorts: [port],
    })],
  });
  const D = await startGateway({
    name: 'gateway-d',
    port,
    issuer: provider.issuer,
    clientId: CLIENT_A,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: exchange.port,
  });
  try {
    const live = await browser();
    const first = `${D.origin}/owa/?e2e=${tag()}`;
    await live.page.goto(first);
    assert.ok(live.page.url().startsWith(`${provider.base}/interaction/`));
    await signInAtProvider(live.page, { account: 'alice', mfa: true, landOn: first });

    // A sign-in under way when the provider goes down: the user is on its page, then the
    // provider stops before the gateway redeems the code.
    const since = Date.now();
    const late = await browser();
    const lateUrl = `${D.origin}/owa/?e2e=${tag()}`;
    await late.page.goto(lateUrl);
    await late.page.waitForSelector('#signin-form');
    await late.page.route(`${D.origin}/_gateway/callback`, async (route) => {
      await provider.stop();
      await route.continue();
    });
    const answer = late.page.waitForResponse((r) => r.url() === `${D.origin}/_gateway/callback`);
    await signInAtProvider(late.page, { account: 'alice', mfa: true });
    assert.equal((await answer).status(), 503);
    await late.page.waitForLoadState('load');
    assert.equal(await late.page.textContent('h1'), 'Sign-in is unavailable');

    // The live session still reaches Exchange.
    const stillThere = `${D.origin}/owa/?e2e=${tag()}`;
    await live.page.goto(stillThere);
    assert.equal(live.page.url(), stillThere);
    assert.equal(await live.page.textContent('#received'), `GET ${stillThere.slice(D.origin.length)}`);

    // A new browser gets the gateway's 503 page at once, not a redirect to a dead provider.
    const fresh = await browser();
    const newUrl = `${D.origin}/owa/?e2e=${tag()}`;
    const response = await fresh.page.goto(newUrl);
    assert.equal(response.status(), 503);
    assert.equal(fresh.page.url(), newUrl);
    assert.equal(await fresh.page.textContent('h1'), 'Sign-in is unavailable');
    assert.match(await fresh.page.textContent('body'), /if you are already signed in, your session keeps working/);
    await fresh.page.screenshot({ path: path.join(OUT, 'provider-down.png') });

    const reached = exchange.browserRequests(since).map((r) => r.url);
    assert.deepEqual(reached, [stillThere.slice(D.origin.length)], 'only the live session reached Exchange');
  } finally {
    await D.stop();
    await provider.stop();
  }
});

scenario("the gateway's cookies never reach Exchange", async ({ browser }) => {
  const { A, exchange } = env;
  const since = Date.now();
  const { page, context } = await browser();
  const sentToGateway = [];
  page.on('request', async (r) => {
    if (r.url().startsWith(`${A.origin}/owa/`) || r.url().startsWith(`${A.origin}/ecp/`)) {
      sentToGateway.push((await r.allHeaders()).cookie || '');
    }
  });
  await signIn(page, `${A.origin}/owa/?e2e=${tag()}`, { account: 'alice', mfa: true });
  await page.goto(`${A.origin}/owa/?path=/mail/sentitems&e2e=${tag()}`);
  await page.evaluate(() => fetch('/owa/service.svc?action=GetFolder', { method: 'POST', body: '{}' }));
  await page.goto(`${A.origin}/ecp/?e2e=${tag()}`);
  assert.ok(await sessionCookie(context));
  assert.ok(sentToGateway.some((c) => c.includes(`${SESSION_COOKIE}=`)), 'the browser sent the session cookie to the gateway');

  const mine = exchange.browserRequests(since);
  assert.ok(mine.length >= 4, `Exchange saw this test's requests (${mine.length})`);
  // After the first page Exchange's own cookies come back untouched.
  assert.ok(mine.slice(1).every((r) => /(^|; )cadata=/.test(r.headers.cookie) && /X-OWA-CANARY=/.test(r.headers.cookie)),
    'Exchange cookies pass through');

  // Every request Exchange ever received in this run, health probes included.
  const leaked = exchange.requests.filter((r) => /(^|;\s*)__Host-mfagw/.test(r.headers.cookie || ''));
  assert.deepEqual(leaked.map((r) => r.url), [], 'no gateway cookie reached Exchange');
  assert.ok(exchange.requests.every((r) => !r.headers.authorization), 'no Authorization header reached Exchange');
});

scenario('form_post from a provider on another site still finds the pending sign-in (SameSite=None)', async ({ browser }) => {
  const { exchange } = env;
  // Entra is another site than the published host: its form_post is a cross-site POST, which
  // only SameSite=None cookies accompany. localhost and 127.0.0.1 are different sites.
  const port = await freePort();
  const secret = randomSecret();
  const provider = await startProvider({
    name: 'provider-cross-site',
    host: 'localhost',
    clients: [clientFor({
      clientId: CLIENT_A, secret, method: 'client_secret_post', gatewayPorts: [port],
    })],
  });
  const E = await startGateway({
    name: 'gateway-e',
    port,
    issuer: provider.issuer,
    clientId: CLIENT_A,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: exchange.port,
  });
  try {
    const { page } = await browser();
    const sentWithCallback = [];
    page.on('request', async (r) => {
      if (r.url() === `${E.origin}/_gateway/callback`) {
        sentWithCallback.push({ method: r.method(), cookie: (await r.allHeaders()).cookie || '', site: (await r.allHeaders())['sec-fetch-site'] });
      }
    });
    const target = `${E.origin}/owa/?e2e=${tag()}`;
    await page.goto(target);
    assert.ok(page.url().startsWith(`http://localhost:${provider.port}/interaction/`), page.url());
    await signInAtProvider(page, { account: 'alice', mfa: true, landOn: target });
    assert.equal(await page.textContent('#owa-inbox'), 'Inbox');
    assert.equal(sentWithCallback.length, 1);
    assert.equal(sentWithCallback[0].method, 'POST');
    assert.equal(sentWithCallback[0].site, 'cross-site');
    assert.match(sentWithCallback[0].cookie, /__Host-mfagw-login-/, 'the pending-login cookie came with the cross-site POST');
  } finally {
    await E.stop();
    await provider.stop();
  }
});

// ─── recovering from refusals and outages ───────────────────────────────────────────────────

scenario('after an MFA refusal, "Sign in again" asks for a new sign-in instead of looping', {}, async ({ browser }) => {
  const { A, provider } = env;
  const { page } = await browser();
  await page.goto(`${A.origin}/owa/?e2e=${tag()}`);
  await signInAtProvider(page, { account: 'alice', mfa: false });
  await page.waitForURL((u) => u.href === `${A.origin}/_gateway/callback`);
  await page.waitForSelector('text=did not include multifactor authentication');
  const since = Date.now();
  const outcome = Promise.race([
    page.waitForSelector('#signin-form').then(() => 'the provider asks for an account', () => null),
    page.waitForResponse((r) => r.url() === `${A.origin}/_gateway/callback`)
      .then((r) => `the gateway answered ${r.status()} again without the user doing anything`, () => null),
  ]);
  await page.getByRole('link', { name: 'Sign in again' }).click();
  assert.equal(await outcome, 'the provider asks for an account');
  assert.equal((await authorizationRequests(provider, since)).length, 1);
});

scenario('provider stopped: new sign-ins get the 503 page once the gateway has noticed (it checks every 30 s)', {}, async ({ browser }) => {
  const { exchange } = env;
  const port = await freePort();
  const secret = randomSecret();
  const provider = await startProvider({
    name: 'provider-stopped',
    clients: [clientFor({
      clientId: CLIENT_A, secret, method: 'client_secret_post', gatewayPorts: [port],
    })],
  });
  const F = await startGateway({
    name: 'gateway-f',
    port,
    issuer: provider.issuer,
    clientId: CLIENT_A,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: exchange.port,
  });
  try {
    await provider.stop();
    // The gateway checks the provider every 30 seconds: wait (bounded) until a page load
    // without a session is answered by the gateway itself instead of a redirect.
    const deadline = Date.now() + 45000;
    let status = 0;
    while (Date.now() < deadline) {
      // node:http, not fetch: fetch would add `sec-fetch-mode: cors` and get the 440 a script gets.
      status = await new Promise((resolve) => {
        http.get(`${F.origin}/owa/`, { headers: { accept: 'text/html' } }, (res) => {
          res.resume();
          resolve(res.statusCode);
        }).on('error', () => resolve(0));
      });
      if (status === 503) break;
      await sleep(1000);
    }
    assert.equal(status, 503, 'the gateway kept redirecting new sign-ins to the stopped provider');
    const { page } = await browser();
    const url = `${F.origin}/owa/?e2e=${tag()}`;
    const response = await page.goto(url).catch((e) => e);
    assert.ok(!(response instanceof Error), `the browser was sent to the stopped provider: ${String(response).split('\n')[0]}`);
    assert.equal(response.status(), 503);
    assert.equal(page.url(), url);
  } finally {
    await F.stop();
    await provider.stop();
  }
});
