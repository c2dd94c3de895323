// Browser suite for `sso = "kerberos"`: headless Chromium signs in once, with MFA, and OWA — on
// Windows authentication with Extended Protection, behind the gateway — opens as the user's
// Active Directory account, with no second prompt: the gateway obtains the user's Kerberos
// ticket by constrained delegation (S4U2Self, S4U2Proxy) from a real Samba domain controller and
// sends it bound to its TLS connection to Exchange. A second user in another browser reaches
// Exchange as themselves.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';

import { ACCOUNTS } from './lib/provider.mjs';
import {
  clientFor, freePort, randomSecret, startGateway, startProvider,
} from './lib/harness.mjs';
import {
  EXCHANGE_NAME, GATEWAY_PRINCIPAL, REALM, kerberosLabMissing, startKerberosLab,
} from './lib/kerberos-lab.mjs';
import { scenario, signInAtProvider } from './lib/scenario.mjs';

const CLIENT = '5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b';
const missing = kerberosLabMissing();
if (missing) console.log(missing);

const env = {};

/** How Exchange (the acceptor) names a user signed in by enterprise name (their UPN). */
const seenAs = (upn) => `${upn.replace('@', '\\@')}@${REALM}`;

before(async () => {
  if (missing) return;
  env.lab = await startKerberosLab({ upns: { alice: ACCOUNTS.alice.upn, bob: ACCOUNTS.bob.upn } });
  const port = await freePort();
  const secret = randomSecret();
  env.provider = await startProvider({
    name: 'provider-kerberos',
    clients: [clientFor({
      clientId: CLIENT, secret, method: 'client_secret_post', gatewayPorts: [port],
    })],
  });
  env.gateway = await startGateway({
    name: 'gateway-kerberos',
    port,
    issuer: env.provider.issuer,
    clientId: CLIENT,
    secret,
    method: 'post',
    sessionKeys: [randomSecret()],
    upstream: `servers = ["${env.lab.exchangeUrl}"]
ca_file = "${env.lab.caFile}"
tls_server_name = "${EXCHANGE_NAME}"`,
    owa: 'sso = "kerberos"',
    ecp: 'sso = "kerberos"',
    extra: `
[sso.kerberos]
realm = "${REALM}"
kdc = ["${env.lab.kdc}"]
principal = "${GATEWAY_PRINCIPAL}"
keytab = { file = "${env.lab.keytab}" }
`,
  });
});

after(async () => {
  await env.gateway?.stop();
  await env.provider?.stop();
  env.lab?.stop();
});

scenario('with sso = "kerberos", one MFA sign-in opens OWA as the user\'s AD account, without a second prompt', { skip: missing || false }, async ({ browser }) => {
  const since = Date.now();
  const { page } = await browser();
  await page.goto(`${env.gateway.origin}/owa/`);
  assert.ok(page.url().startsWith(`${env.provider.base}/interaction/`), page.url());
  await signInAtProvider(page, { account: 'bob', mfa: true, landOn: `${env.gateway.origin}/owa/` });
  assert.equal((await page.textContent('body')).trim(), seenAs(ACCOUNTS.bob.upn));

  // The next pages too, straight from Exchange: no prompt of the browser's own (the gateway
  // never passes Exchange's Negotiate challenge on) and no new sign-in at the provider.
  const next = await page.goto(`${env.gateway.origin}/ecp/?rfr=owa`);
  assert.equal(next.status(), 200);
  assert.equal((await page.textContent('body')).trim(), seenAs(ACCOUNTS.bob.upn));
  assert.equal(next.headers()['www-authenticate'], undefined);

  // alice, in another browser, is alice at Exchange — never on bob's connections.
  const other = await browser();
  await other.page.goto(`${env.gateway.origin}/owa/`);
  await signInAtProvider(other.page, { account: 'alice', mfa: true, landOn: `${env.gateway.origin}/owa/` });
  assert.equal((await other.page.textContent('body')).trim(), seenAs(ACCOUNTS.alice.upn));

  // Every request Exchange got carried a token it verified, channel binding included.
  const verdicts = env.lab.verdicts;
  assert.deepEqual(
    verdicts.map((v) => [v.accepted, v.user, v.persisted]),
    [
      [true, seenAs(ACCOUNTS.bob.upn), false],
      [true, seenAs(ACCOUNTS.bob.upn), false],
      [true, seenAs(ACCOUNTS.alice.upn), false],
    ],
    JSON.stringify(verdicts),
  );
  const bobPeers = verdicts.slice(0, 2).map((v) => v.peer);
  assert.ok(!bobPeers.includes(verdicts[2].peer), JSON.stringify(verdicts));

  const signIns = (await env.provider.requests())
    .filter((r) => r.at >= since && r.method === 'POST' && /\/interaction\/[^/]+\/login/.test(r.url));
  assert.equal(signIns.length, 2, 'one interactive sign-in per user');
});
