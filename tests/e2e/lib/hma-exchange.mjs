// Exchange 2019 OWA and ECP with hybrid modern authentication (HMA), for the browser suite:
// Exchange signs the browser in at Entra itself, as a second OpenID client of the same
// provider (the "Office 365 Exchange Online" application), and checks the ID token Entra
// posts back the way Exchange does.
//
//   GET /owa/…, /ecp/… without its own cookie   302 to the provider's authorization endpoint:
//                                              client_id = the Exchange Online app id,
//                                              response_type=code id_token, response_mode=form_post,
//                                              redirect_uri = https://<Host><vdir>/, nonce, state
//                                              and PKCE kept in its own (SameSite=None) cookie
//   POST /owa/, /ecp/ (id_token, code, state)   the ID token: RS256 signature by a key of the
//                                              provider's JWKS (by kid), iss, aud = its client id,
//                                              exp, nonce and state of this browser's cookie; then
//                                              its own session cookie and back to the vdir
//   GET /owa/… with its cookie                  the mailbox of the UPN in the token
//
// Every verdict and every sign-in POST (with its Origin and Sec-Fetch-Site) is recorded.
import crypto from 'node:crypto';
import http from 'node:http';

/** The application id of "Office 365 Exchange Online", the client Exchange signs in as. */
export const EXCHANGE_ONLINE_APP_ID = '00000002-0000-0ff1-ce00-000000000000';

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const random = () => crypto.randomBytes(24).toString('base64url');

/** The claims of an RS256 JWT verified with the JWKS key its `kid` names; or why not. */
async function verifyIdToken(token, { issuer, jwksUri }) {
  const parts = token.split('.');
  if (parts.length !== 3) return { refused: 'not_a_jws' };
  const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
  if (header.alg !== 'RS256') return { refused: 'alg_not_rs256' };
  const jwks = await (await fetch(jwksUri)).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) return { refused: 'unknown_kid' };
  const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`),
    crypto.createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(parts[2], 'base64url'));
  if (!ok) return { refused: 'bad_signature' };
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  if (claims.iss !== issuer) return { refused: 'wrong_issuer' };
  const audiences = [].concat(claims.aud);
  if (!audiences.includes(EXCHANGE_ONLINE_APP_ID)) return { refused: 'wrong_audience' };
  if (!(claims.exp * 1000 > Date.now())) return { refused: 'expired' };
  return { claims };
}

/** Starts the stand-in. `provider`: { issuer, authorizationEndpoint, jwksUri }. */
export async function startHmaExchange(provider) {
  const verdicts = [];
  const posts = [];
  const pending = new Map(); // cookie value -> { nonce, state }
  const sessions = new Map(); // cookie value -> upn
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const url = new URL(req.url, 'http://x');
    const lower = url.pathname.toLowerCase();
    const send = (status, body, headers = {}) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...headers });
      res.end(body);
    };
    if (lower === '/owa/healthcheck.htm' || lower === '/ecp/healthcheck.htm') return send(200, '<h2>200 OK</h2>');
    const vdir = ['/owa', '/ecp'].find((v) => lower === v || lower.startsWith(`${v}/`));
    if (!vdir) return send(404, '<h1>404</h1>');
    const cookies = Object.fromEntries((req.headers.cookie || '').split(/; */).filter(Boolean)
      .map((c) => [c.slice(0, c.indexOf('=')), c.slice(c.indexOf('=') + 1)]));

    if (req.method === 'POST' && lower.replace(/\/$/, '') === vdir) {
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      posts.push({
        vdir,
        origin: req.headers.origin,
        site: req.headers['sec-fetch-site'],
        fields: [...form.keys()],
        gatewayCookie: /__Host-mfagw/.test(req.headers.cookie || ''),
      });
      const verdict = await (async () => {
        if (form.get('error')) return { refused: `entra_error_${form.get('error')}` };
        const expected = pending.get(cookies.HmaE2ePending);
        if (!expected) return { refused: 'no_pending_sign_in' };
        pending.delete(cookies.HmaE2ePending);
        if (form.get('state') !== expected.state) return { refused: 'state_mismatch' };
        if (!form.get('id_token') || !form.get('code')) return { refused: 'no_id_token_and_code' };
        const checked = await verifyIdToken(form.get('id_token'), provider);
        if (checked.refused) return checked;
        if (checked.claims.nonce !== expected.nonce) return { refused: 'nonce_mismatch' };
        if (!checked.claims.upn) return { refused: 'no_upn' };
        return { upn: checked.claims.upn };
      })();
      verdicts.push({ vdir, ...verdict });
      if (verdict.refused) return send(401, `<h1 id="exchange-error">Exchange refused the sign-in: ${escape(verdict.refused)}</h1>`);
      const value = random();
      sessions.set(value, verdict.upn);
      res.setHeader('set-cookie', [
        `HmaE2e=${value}; path=/; secure; HttpOnly`,
        'HmaE2ePending=; path=/; max-age=0; secure; SameSite=None',
      ]);
      return send(302, '', { location: `${vdir}/` });
    }

    const upn = sessions.get(cookies.HmaE2e);
    if (upn) {
      const title = vdir === '/owa' ? 'Mailbox' : 'Exchange admin center';
      return send(200, `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${title}</title></head><body>
<h1 id="hma-${vdir.slice(1)}">${title} of <span id="upn">${escape(upn)}</span></h1></body></html>`);
    }
    // Not signed in to Exchange: to Entra, as the Exchange Online application.
    const nonce = random();
    const state = random();
    const verifier = random() + random();
    const key = random();
    pending.set(key, { nonce, state });
    const query = new URLSearchParams({
      client_id: EXCHANGE_ONLINE_APP_ID,
      redirect_uri: `https://${req.headers.host}${vdir}/`,
      response_type: 'code id_token',
      response_mode: 'form_post',
      scope: 'openid',
      nonce,
      state,
      code_challenge: crypto.createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
    });
    return send(302, '', {
      location: `${provider.authorizationEndpoint}?${query}`,
      // ASP.NET's OpenID Connect middleware: SameSite=None, so it comes back with Entra's POST.
      'set-cookie': `HmaE2ePending=${key}; path=/; secure; HttpOnly; SameSite=None`,
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    verdicts,
    posts,
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}
