// An OpenID provider shaped like Microsoft Entra ID (v1.0 tokens), built on oidc-provider 9
// (an OpenID Certified implementation). Run as its own process so that the suite can really
// stop it ("provider down"):
//
//   node lib/provider.mjs /path/to/provider.json
//
// provider.json: { "port": 0, "host": "127.0.0.1", "tenant": "<guid>", "clients": [ { client_id,
//   client_secret, token_endpoint_auth_method, redirect_uris, post_logout_redirect_uris } ] }
// It listens on 127.0.0.1; `host` is the name in its issuer (127.0.0.1, or localhost to be on
// another site than gateways on 127.0.0.1).
//
// It prints one line `{"ready":true,"port":N,"issuer":"…"}` on stdout once it listens.
//
// What makes it Entra-like:
// - tenant-specific issuer http://127.0.0.1:<port>/<tenant>/ (as https://sts.windows.net/<tid>/),
//   discovery at <issuer>.well-known/openid-configuration;
// - ID tokens carry tid, oid, upn, unique_name, name, groups, onprem_sid (accounts synchronised
//   from AD), sid, auth_time and amr
//   (["pwd","mfa"] or ["pwd"], chosen on the sign-in page), signed RS256;
// - web clients authenticate with client_secret_post or client_secret_basic; PKCE (S256) is
//   required of every client; response_mode=form_post;
// - an end-session endpoint that signs out at once (Entra does not ask "are you sure") and
//   returns to a registered post_logout_redirect_uri.
//
// Test-only control endpoints, under /__e2e/ (never part of a real provider):
//   GET  /__e2e/requests   every request received: [{ at, method, url, headers }]
//   GET  /__e2e/tokens     every ID token issued: [{ at, client_id, header, payload }]
//   GET  /__e2e/keys       the key ids in the JWKS, signing key first
//   POST /__e2e/rotate     new RS256 signing key (new kid) first, previous key kept second;
//                          the provider is rebuilt in place with the new key set
//
// Cookies on 127.0.0.1 are shared by every port, so this provider's cookies have names of
// their own (e2eop_*), distinct from the gateway's (__Host-mfagw*) and Exchange's.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

/** The directory of people who can sign in. */
export const ACCOUNTS = {
  alice: {
    sub: 'aLiCe-pairwise-sub-0001',
    oid: '11111111-aaaa-4aaa-8aaa-000000000001',
    upn: 'alice@contoso-e2e.example',
    name: 'Alice Admin',
    onprem_sid: 'S-1-5-21-2718281828-3141592653-1618033988-1104',
    groups: ['5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9', '7a7a7a7a-0000-4000-8000-000000000002'],
  },
  bob: {
    sub: 'bOb-pairwise-sub-0002',
    oid: '22222222-bbbb-4bbb-8bbb-000000000002',
    upn: 'bob@contoso-e2e.example',
    name: 'Bob User',
    onprem_sid: 'S-1-5-21-2718281828-3141592653-1618033988-1105',
    groups: ['7a7a7a7a-0000-4000-8000-000000000002'],
  },
  // A cloud-only account: not synchronised from Active Directory, so no onprem_sid.
  dave: {
    sub: 'dAvE-pairwise-sub-0004',
    oid: '44444444-dddd-4ddd-8ddd-000000000004',
    upn: 'dave@contoso-e2e.example',
    name: 'Dave Cloud',
    groups: [],
  },
};

const htmlEscape = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomBytes(12).toString('base64url'), alg: 'RS256', use: 'sig' };
}

const PAGE_STYLE = `
  body{font-family:"Segoe UI",Arial,sans-serif;background:#f2f2f2;margin:0;color:#1b1b1b}
  .box{background:#fff;max-width:440px;margin:60px auto;padding:36px 44px;box-shadow:0 2px 6px rgba(0,0,0,.2)}
  .brand{font-weight:600;color:#737373;letter-spacing:.02em}
  h1{font-size:24px;font-weight:600;margin:16px 0 20px}
  label.acct{display:flex;align-items:center;gap:12px;padding:10px;border:1px solid #ddd;margin-bottom:8px;cursor:pointer}
  label.acct small{display:block;color:#555}
  .mfa{margin:18px 0;padding:12px;background:#f5f9ff;border-left:4px solid #0067b8}
  input[type=password]{width:100%;padding:6px 0;border:0;border-bottom:1px solid #666;font-size:15px;margin:6px 0 4px}
  button{background:#0067b8;color:#fff;border:0;padding:8px 32px;font-size:15px;cursor:pointer;float:right}
  .note{color:#555;font-size:13px;clear:both;padding-top:18px}`;

function signInPage({ uid, client, params, prompt }) {
  const accounts = Object.entries(ACCOUNTS).map(([id, a], i) => `
      <label class="acct"><input type="radio" name="account" id="account-${id}" value="${id}"${i === 0 ? ' checked' : ''}>
        <span>${htmlEscape(a.name)}<small>${htmlEscape(a.upn)}</small></span></label>`).join('');
  const again = prompt.reasons?.includes('login_prompt') || prompt.reasons?.includes('max_age')
    ? '<p id="reauth">This site asks you to sign in again.</p>' : '';
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to your account</title>
<style>${PAGE_STYLE}</style></head>
<body><div class="box">
  <div class="brand">Contoso E2E &middot; test identity provider</div>
  <h1>Pick an account</h1>
  ${again}
  <form id="signin-form" method="post" action="/interaction/${htmlEscape(uid)}/login" autocomplete="off">
    ${accounts}
    <label for="password">Password</label>
    <input type="password" id="password" name="password" value="correct horse">
    <div class="mfa"><label><input type="checkbox" id="mfa" name="mfa" value="yes">
      MFA completed (approved in the Authenticator app)</label></div>
    <button type="submit" id="sign-in">Sign in</button>
  </form>
  <p class="note">Signing in to <b>${htmlEscape(client.clientName || client.clientId)}</b>
    &middot; scope ${htmlEscape(params.scope)}</p>
</div></body></html>`;
}

function buildProvider({ issuer, clients, keys, cookieKeys }) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys },
    cookies: {
      names: { session: 'e2eop_session', interaction: 'e2eop_interaction', resume: 'e2eop_resume' },
      keys: cookieKeys,
    },
    // Entra v1.0 puts these in the ID token itself. oidc-provider only emits amr/acr/auth_time
    // when they are listed under a scope the client gets, hence under `openid`.
    claims: {
      openid: ['sub', 'tid', 'oid', 'upn', 'unique_name', 'name', 'groups', 'onprem_sid', 'amr', 'acr', 'auth_time', 'sid'],
      profile: ['name', 'given_name', 'family_name'],
      email: ['email'],
    },
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    conformIdTokenClaims: false,
    acrValues: ['1'],
    pkce: { required: () => true },
    // 'code id_token': the hybrid flow of Exchange's own sign-in (hybrid modern authentication).
    responseTypes: ['code', 'code id_token'],
    clientAuthMethods: ['client_secret_post', 'client_secret_basic'],
    enabledJWA: { idTokenSigningAlgValues: ['RS256'] },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        // Entra signs out without a confirmation question: submit the confirmation at once.
        logoutSource: async (ctx, form) => {
          ctx.body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Signing out</title>
<style>${PAGE_STYLE}</style></head><body><div class="box"><div class="brand">Contoso E2E &middot; test identity provider</div>
<h1>Signing you out&hellip;</h1>${form}
<noscript><button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button></noscript>
<script>var f=document.getElementById('op.logoutForm');var i=document.createElement('input');
i.type='hidden';i.name='logout';i.value='yes';f.appendChild(i);f.submit();</script></div></body></html>`;
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.body = '<!DOCTYPE html><html><body><h1>You have signed out of your account</h1></body></html>';
        },
      },
    },
    ttl: { Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, AccessToken: 600, IdToken: 3600 },
    findAccount: async (ctx, sub) => {
      const entry = Object.entries(ACCOUNTS).find(([, a]) => a.sub === sub);
      if (!entry) return undefined;
      const [, a] = entry;
      return {
        accountId: sub,
        claims: async () => ({
          sub,
          tid: TENANT,
          oid: a.oid,
          upn: a.upn,
          unique_name: a.upn,
          name: a.name,
          given_name: a.name.split(' ')[0],
          family_name: a.name.split(' ')[1],
          email: a.upn,
          groups: a.groups,
          ...(a.onprem_sid ? { onprem_sid: a.onprem_sid } : {}),
        }),
      };
    },
    // First-party application: consent is implied (as for an Entra app an admin consented to).
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const existing = await ctx.oidc.provider.Grant.find(grantId);
        if (existing) return existing;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid profile email');
      await grant.save();
      return grant;
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Sign-in error</title>
<style>${PAGE_STYLE}</style></head><body><div class="box"><h1>Sign-in error</h1>
<p id="op-error">${htmlEscape(out.error)}: ${htmlEscape(out.error_description || '')}</p></div></body></html>`;
    },
  });
  // Entra always puts `sid` in its ID tokens; oidc-provider only for clients registered for
  // back-channel logout. The gateway's front-channel logout needs it: always include it.
  Object.defineProperty(provider.Client.prototype, 'includeSid', { value: () => true });
  return provider;
}

let TENANT;

export async function startProvider(options) {
  TENANT = options.tenant;
  const tokens = [];
  const requests = [];
  const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
  let keys = [newSigningKey()];
  let provider;
  let issuer;
  let handler;
  const prefix = `/${options.tenant}/`;

  function rebuild() {
    provider = buildProvider({
      issuer, clients: options.clients, keys, cookieKeys,
    });
    provider.on('grant.success', (ctx) => {
      const idToken = ctx.body?.id_token;
      if (!idToken) return;
      const [h, p] = idToken.split('.');
      tokens.push({
        at: Date.now(),
        client_id: ctx.oidc.client?.clientId,
        header: JSON.parse(Buffer.from(h, 'base64url')),
        payload: JSON.parse(Buffer.from(p, 'base64url')),
      });
    });
    provider.on('server_error', (ctx, err) => console.error('provider server_error', err));
    handler = provider.callback();
  }

  async function readForm(req) {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  function send(res, status, body, type = 'application/json') {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  }

  async function interaction(req, res) {
    const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
    if (!m) return send(res, 404, { error: 'not found' });
    const details = await provider.interactionDetails(req, res);
    const { uid, prompt, params } = details;
    if (req.method === 'GET') {
      if (prompt.name !== 'login') {
        // Consent is implied for this first-party client (loadExistingGrant); nothing to ask.
        return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
      }
      const client = await provider.Client.find(params.client_id);
      return send(res, 200, signInPage({ uid, client, params, prompt }), 'text/html; charset=utf-8');
    }
    if (req.method === 'POST' && m[2]) {
      const form = await readForm(req);
      const account = ACCOUNTS[form.get('account')];
      if (!account) return send(res, 400, 'unknown account', 'text/plain');
      const mfa = form.get('mfa') === 'yes';
      return provider.interactionFinished(req, res, {
        login: {
          accountId: account.sub,
          amr: mfa ? ['pwd', 'mfa'] : ['pwd'],
          acr: '1',
          ts: Math.floor(Date.now() / 1000),
        },
      }, { mergeWithLastSubmission: false });
    }
    return send(res, 405, { error: 'method not allowed' });
  }

  async function control(req, res) {
    const path = req.url.split('?')[0];
    if (path === '/__e2e/requests') return send(res, 200, requests);
    if (path === '/__e2e/tokens') return send(res, 200, tokens);
    if (path === '/__e2e/keys') return send(res, 200, keys.map((k) => k.kid));
    if (path === '/__e2e/rotate' && req.method === 'POST') {
      keys = [newSigningKey(), keys[0]];
      rebuild();
      return send(res, 200, keys.map((k) => k.kid));
    }
    return send(res, 404, { error: 'not found' });
  }

  const server = http.createServer((req, res) => {
    if (!req.url.startsWith('/__e2e/')) {
      requests.push({
        at: Date.now(), method: req.method, url: req.url, headers: req.headers,
      });
    }
    const fail = (err) => {
      console.error('provider error', err);
      if (!res.headersSent) send(res, 500, { error: String(err) });
    };
    try {
      if (req.url.startsWith('/__e2e/')) return control(req, res).catch(fail);
      if (req.url.startsWith('/interaction/')) return interaction(req, res).catch(fail);
      if (req.url.startsWith(prefix)) {
        // Mounted under the tenant path, as Entra's issuer is: oidc-provider derives its mount
        // path from originalUrl.
        req.originalUrl = req.url;
        req.url = req.url.slice(prefix.length - 1);
        return handler(req, res);
      }
      return send(res, 404, { error: 'not found' });
    } catch (err) {
      return fail(err);
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port || 0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  issuer = `http://${options.host || '127.0.0.1'}:${port}${prefix}`;
  rebuild();
  return {
    port,
    issuer,
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const options = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const started = await startProvider(options);
  process.stdout.write(`${JSON.stringify({ ready: true, port: started.port, issuer: started.issuer })}\n`);
  const stop = () => started.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
