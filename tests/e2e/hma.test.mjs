// Browser suite for Exchange with hybrid modern authentication (HMA) behind the gateway: headless
// Chromium signs in once, with MFA, at the provider (the gateway's client); then Exchange sends
// the browser to the same provider as its own client (the Exchange Online application), the
// provider answers from its session with a form_post page, and that cross-site POST to /owa/ —
// which in Chromium carries no SameSite=Lax cookie — is relayed by the gateway as a same-site
// POST that does. Exchange validates the ID token and shows the mailbox of that user.
//
// Over HTTPS as mail.e2e.test (Chromium maps the name to 127.0.0.1 and accepts the test
// certificate): real SameSite behaviour needs real Secure cookies, and Exchange's reply URLs
// are https://<host>/owa/ and /ecp/.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { EXCHANGE_ONLINE_APP_ID, startHmaExchange } from './lib/hma-exchange.mjs';
import {
  TENANT, freePort, makeCertificate, randomSecret, startGateway, startProvider, tempDir,
} from './lib/harness.mjs';
import { scenario, signInAtProvider } from './lib/scenario.mjs';

const HOST = 'mail.e2e.test';
const CLIENT = '4d5e6f7a-8b9c-4dae-8f01-2b3c4d5e6f7a';
const ALICE = 'alice@contoso-e2e.example';

const env = {};

before(async () => {
  const dir = tempDir('hma');
  const tls = makeCertificate(dir, 'tls', { cn: HOST, dns: [HOST] });
  const port = await freePort();
  env.origin = `https://${HOST}:${port}`;
  const secret = randomSecret();
  env.provider = await startProvider({
    name: 'provider-hma',
    clients: [{
      client_id: CLIENT,
      client_secret: secret,
      client_name: 'mfa-gateway',
      token_endpoint_auth_method: 'client_secret_post',
      redirect_uris: [`${env.origin}/_gateway/callback`],
      post_logout_redirect_uris: [`${env.origin}/_gateway/signed-out`],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      id_token_signed_response_alg: 'RS256',
    }, {
      // The Office 365 Exchange Online service principal, with the /owa and /ecp reply URLs
      // HMA needs.
      client_id: EXCHANGE_ONLINE_APP_ID,
      client_secret: randomSecret(),
      client_name: 'Office 365 Exchange Online',
      token_endpoint_auth_method: 'client_secret_post',
      redirect_uris: [`${env.origin}/owa/`, `${env.origin}/ecp/`],
      response_types: ['code id_token'],
      grant_types: ['authorization_code', 'implicit'],
      id_token_signed_response_alg: 'RS256',
    }],
  });
  const discovery = await (await fetch(`${env.provider.issuer}.well-known/openid-configuration`)).json();
  env.authorizationEndpoint = discovery.authorization_endpoint;
  env.exchange = await startHmaExchange({
    issuer: env.provider.issuer,
    authorizationEndpoint: discovery.authorization_endpoint,
    jwksUri: discovery.jwks_uri,
  });
  env.gateway = await startGateway({
    name: 'gateway-hma',
    port,
    host: HOST,
    tls,
    issuer: env.provider.issuer,
    clientId: CLIENT,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    exchangePort: env.exchange.port,
  });
});

after(async () => {
  await env.gateway?.stop();
  await env.provider?.stop();
  await env.exchange?.close();
});

const chromium = (browser) => browser([
  `--host-resolver-rules=MAP ${HOST} 127.0.0.1`, '--ignore-certificate-errors',
]);

scenario('with hybrid modern authentication, one MFA sign-in opens the mailbox of that user', async ({ browser }) => {
  const since = Date.now();
  const { page } = await chromium(browser);
  await page.goto(`${env.origin}/owa/`);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), page.url());
  await signInAtProvider(page, { account: 'alice', mfa: true });
  await page.waitForSelector('#hma-owa', { timeout: 20000 });
  assert.equal(await page.textContent('#upn'), ALICE);
  assert.equal(page.url(), `${env.origin}/owa/`);

  // Entra's answer reached /owa/ twice: cross-site from the provider's page without the
  // gateway's cookie (relayed by the gateway, never forwarded), then same-origin from the
  // gateway's relay page, with the cookie — the only one Exchange saw.
  const { posts, verdicts } = env.exchange;
  assert.equal(posts.length, 1, JSON.stringify(posts));
  assert.equal(posts[0].site, 'same-origin');
  assert.equal(posts[0].origin, env.origin);
  for (const field of ['code', 'id_token', 'state']) assert.ok(posts[0].fields.includes(field), JSON.stringify(posts[0]));
  assert.equal(posts[0].gatewayCookie, false, 'Exchange never sees the gateway cookie');
  assert.deepEqual(verdicts, [{ vdir: '/owa', upn: ALICE }]);

  // One sign-in page at the provider, two authorization requests (gateway, then Exchange).
  const authorizations = (await env.provider.requests())
    .filter((r) => r.at >= since && r.method === 'GET' && r.url.startsWith(`/${TENANT}/auth?`));
  assert.equal(authorizations.length, 2, JSON.stringify(authorizations.map((r) => r.url)));
  assert.ok(authorizations[1].url.includes(EXCHANGE_ONLINE_APP_ID));
  const signInPages = (await env.provider.requests())
    .filter((r) => r.at >= since && r.method === 'POST' && /\/interaction\/[^/]+\/login/.test(r.url));
  assert.equal(signInPages.length, 1, 'one interactive sign-in');
});
