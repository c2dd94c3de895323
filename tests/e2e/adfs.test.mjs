// Browser suite for `sso = "adfs"`: headless Chromium signs in once, with MFA, and lands in the
// mailbox of that very user on an Exchange stand-in in AD FS claims authentication mode — the
// gateway is the AD FS. The browser itself runs the token page (its script, allowed by the
// page's Content-Security-Policy hash, posts the form) and sends the Referer Exchange checks.
//
// The gateway listens for HTTPS as mail.e2e.test (Chromium maps the name to 127.0.0.1 and
// accepts the test certificate): Exchange's realm is always https://<host>/<vdir>/.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { startAdfsExchange, thumbprintOf } from './lib/adfs-exchange.mjs';
import {
  TENANT, freePort, makeCertificate, randomSecret, startGateway, startProvider, tempDir,
} from './lib/harness.mjs';
import { scenario, signInAtProvider } from './lib/scenario.mjs';

const HOST = 'mail.e2e.test';
const CLIENT = '3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f';
const ALICE = { upn: 'alice@contoso-e2e.example', sid: 'S-1-5-21-2718281828-3141592653-1618033988-1104' };

const env = {};

before(async () => {
  const dir = tempDir('adfs');
  const tls = makeCertificate(dir, 'tls', { cn: HOST, dns: [HOST] });
  env.signing = makeCertificate(dir, 'token-signing', { cn: 'mfa-gateway token signing (e2e)' });
  const port = await freePort();
  env.origin = `https://${HOST}:${port}`;
  env.issuer = `${env.origin}/_gateway/wsfed/`;
  // Set-OrganizationConfig -AdfsIssuer … -AdfsAudienceUris … -AdfsSignCertificateThumbprints …
  env.exchange = await startAdfsExchange({
    adfsIssuer: env.issuer,
    audiences: [`${env.origin}/owa/`, `${env.origin}/ecp/`],
    thumbprints: [thumbprintOf(env.signing.certPem)],
    certFile: env.signing.cert,
  });
  const secret = randomSecret();
  env.provider = await startProvider({
    name: 'provider-adfs',
    clients: [{
      client_id: CLIENT,
      client_secret: secret,
      client_name: 'mfa-gateway (AD FS mode)',
      token_endpoint_auth_method: 'client_secret_post',
      redirect_uris: [`${env.origin}/_gateway/callback`],
      post_logout_redirect_uris: [`${env.origin}/_gateway/signed-out`],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      id_token_signed_response_alg: 'RS256',
    }],
  });
  env.gateway = await startGateway({
    name: 'gateway-adfs',
    port,
    host: HOST,
    tls,
    issuer: env.provider.issuer,
    clientId: CLIENT,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: env.exchange.port,
    owa: 'sso = "adfs"',
    ecp: 'sso = "adfs"',
    extra: `[sso.adfs]\ntoken_signing = { cert = "${env.signing.cert}", key = "${env.signing.key}" }\n`,
  });
});

after(async () => {
  await env.gateway?.stop();
  await env.provider?.stop();
  await env.exchange?.close();
});

/** Chromium resolving the published name to the gateway and accepting its test certificate. */
const chromium = (browser) => browser([
  `--host-resolver-rules=MAP ${HOST} 127.0.0.1`, '--ignore-certificate-errors',
]);

/** Authorization requests the provider received since `since`. */
async function signInsAtProvider(since) {
  return (await env.provider.requests())
    .filter((r) => r.at >= since && r.method === 'GET' && r.url.startsWith(`/${TENANT}/auth?`));
}

scenario('one MFA sign-in opens the mailbox of that user in Exchange\'s AD FS mode, OWA and ECP', async ({ browser }) => {
  const { exchange } = env;
  const since = Date.now();
  const { page } = await chromium(browser);
  const posts = [];
  page.on('request', (r) => {
    if (r.method() === 'POST' && /\/(owa|ecp)\/$/.test(new URL(r.url()).pathname)) {
      posts.push({ url: r.url(), referer: r.headers().referer });
    }
  });
  await page.goto(`${env.origin}/owa/`);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), page.url());
  await signInAtProvider(page, { account: 'alice', mfa: true });
  await page.waitForSelector('#adfs-owa');
  assert.equal(await page.textContent('#upn'), ALICE.upn);
  assert.equal(await page.textContent('#sid'), ALICE.sid);
  assert.equal(page.url(), `${env.origin}/owa/`);

  // The token went to the realm, posted by the page's own script, with the issuer's full
  // address as Referer (what Exchange requires).
  assert.equal(posts.length, 1, JSON.stringify(posts));
  assert.equal(posts[0].url, `${env.origin}/owa/`);
  assert.ok(posts[0].referer.startsWith(`${env.issuer}?wa=wsignin1.0`), posts[0].referer);
  const accepted = exchange.verdicts.filter((v) => !v.refused);
  assert.deepEqual(accepted.map((v) => [v.vdir, v.upn, v.sid]), [['/owa', ALICE.upn, ALICE.sid]]);

  // ECP: another token for its own realm, without another sign-in at Entra.
  await page.goto(`${env.origin}/ecp/`);
  await page.waitForSelector('#adfs-ecp');
  assert.equal(await page.textContent('#upn'), ALICE.upn);
  assert.equal(exchange.verdicts.filter((v) => !v.refused && v.vdir === '/ecp').length, 1);
  assert.deepEqual(exchange.verdicts.filter((v) => v.refused), [], 'Exchange refused no token');
  assert.equal((await signInsAtProvider(since)).length, 1, 'one sign-in at the identity provider');
});

scenario('sign-out through wsignout1.0 ends the gateway session and the next visit signs in again', async ({ browser }) => {
  const { page } = await chromium(browser);
  await page.goto(`${env.origin}/owa/`);
  await signInAtProvider(page, { account: 'alice', mfa: true });
  await page.waitForSelector('#adfs-owa');
  // Exchange's sign-out in AD FS mode: to <AdfsIssuer>?wa=wsignout1.0, then Entra's sign-out.
  await page.click('#adfs-sign-out');
  await page.waitForURL((u) => u.href.startsWith(`${env.origin}/_gateway/signed-out`));
  const since = Date.now();
  await page.goto(`${env.origin}/owa/`);
  assert.ok(page.url().startsWith(`${env.provider.base}/`), `signed out of the gateway: ${page.url()}`);
  assert.equal((await signInsAtProvider(since)).length, 1);
});

scenario('a realm of another host or path gets a refusal page and no token', async ({ browser }) => {
  const { page } = await chromium(browser);
  await page.goto(`${env.origin}/owa/`);
  await signInAtProvider(page, { account: 'alice', mfa: true });
  await page.waitForSelector('#adfs-owa');
  for (const realm of ['https://evil.example/owa/', `${env.origin}/ews/`]) {
    const query = new URLSearchParams({ wa: 'wsignin1.0', wtrealm: realm });
    const response = await page.goto(`${env.issuer}?${query}`);
    assert.equal(response.status(), 403, realm);
    assert.match(await page.textContent('h1'), /Sign-in not available/, realm);
    assert.equal(await page.locator('input[name="wresult"]').count(), 0, realm);
  }
});

scenario('a user without onprem_sid sees the page that names the missing claim', async ({ browser }) => {
  const { page } = await chromium(browser);
  const refusedBefore = env.exchange.verdicts.length;
  await page.goto(`${env.origin}/owa/`);
  await signInAtProvider(page, { account: 'dave', mfa: true });
  await page.waitForURL((u) => u.href.startsWith(env.issuer));
  assert.match(await page.textContent('main'), /onprem_sid/);
  assert.equal(env.exchange.verdicts.length, refusedBefore, 'no token reached Exchange');
});
