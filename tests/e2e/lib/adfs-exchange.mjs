// Exchange 2019 OWA and ECP in AD FS claims authentication mode, for the browser suite: what
// the gateway's `sso = "adfs"` must satisfy, checked the way Exchange (Windows Identity
// Foundation) checks it.
//
//   GET /owa/…, /ecp/… without its own cookie   302 to <AdfsIssuer>?wa=wsignin1.0&wtrealm=…&wctx=…
//                                              (the realm https://<Host><vdir>/, as Exchange builds it)
//   POST /owa/, /ecp/ (wa=wsignin1.0)           the token: Referer must start with AdfsIssuer;
//                                              signature verified by xmlsec1 against the configured
//                                              certificate; its SHA-1 thumbprint listed; audience =
//                                              realm exactly and listed; 5 minutes of skew; one upn;
//                                              then its own cookie and back to `ru`
//   GET /owa/… with its cookie                  the mailbox of the UPN and SID it read, with a
//                                              sign-out link to <AdfsIssuer>?wa=wsignout1.0
//
// Every verdict is recorded, so the suite can say why Exchange refused a token.

import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { tempDir } from './harness.mjs';

const SKEW_MS = 5 * 60 * 1000;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** SHA-1 thumbprint of a PEM certificate, as Exchange lists it: 40 upper-case hex digits. */
export function thumbprintOf(certPem) {
  return new crypto.X509Certificate(certPem).fingerprint.replace(/:/g, '').toUpperCase();
}

function xmlsec1Verify(xml, certFile) {
  const dir = tempDir('xmlsec1');
  const file = path.join(dir, 'token.xml');
  fs.writeFileSync(file, xml);
  return new Promise((resolve, reject) => {
    execFile('xmlsec1', [
      '--verify', '--id-attr:AssertionID', 'urn:oasis:names:tc:SAML:1.0:assertion:Assertion',
      '--pubkey-cert-pem', certFile, file,
    ], (error, stdout, stderr) => {
      fs.rmSync(dir, { recursive: true, force: true });
      if (error?.code === 'ENOENT') {
        reject(new Error('xmlsec1 is not installed (Debian package xmlsec1)'));
        return;
      }
      resolve(!error && /^OK$/m.test(`${stdout}${stderr}`));
    });
  });
}

const unescapeXml = (s) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"')
  .replace(/&#x([0-9a-f]+);/gi, (_, h) => String.fromCodePoint(parseInt(h, 16))).replace(/&amp;/g, '&');

/** The checks Exchange makes of a posted token; the claims, or why it was refused. */
async function checkToken({ wresult, referer, realm, config }) {
  if (!referer || !referer.toLowerCase().startsWith(config.adfsIssuer.toLowerCase())) {
    return { refused: 'referer_not_issuer', referer };
  }
  const cert = /<ds:X509Certificate>([^<]+)<\/ds:X509Certificate>/.exec(wresult)?.[1];
  if (!cert) return { refused: 'unsigned' };
  const embedded = `-----BEGIN CERTIFICATE-----\n${cert}\n-----END CERTIFICATE-----\n`;
  if (!config.thumbprints.includes(thumbprintOf(embedded))) return { refused: 'unknown_signing_certificate' };
  if (!await xmlsec1Verify(wresult, config.certFile)) return { refused: 'bad_signature' };
  const audience = unescapeXml(/<saml:Audience>([^<]*)<\/saml:Audience>/.exec(wresult)?.[1] ?? '');
  if (audience !== realm || !config.audiences.includes(audience)) return { refused: 'wrong_audience', audience };
  const conditions = /<saml:Conditions NotBefore="([^"]+)" NotOnOrAfter="([^"]+)"/.exec(wresult);
  if (!conditions) return { refused: 'no_conditions' };
  const now = Date.now();
  if (now + SKEW_MS < Date.parse(conditions[1])) return { refused: 'not_yet_valid' };
  if (now - SKEW_MS >= Date.parse(conditions[2])) return { refused: 'expired' };
  const claim = (name) => [...wresult.matchAll(
    new RegExp(`<saml:Attribute AttributeName="${name}"[^>]*><saml:AttributeValue>([^<]*)</saml:AttributeValue>`, 'g'),
  )].map((m) => unescapeXml(m[1]));
  const upns = claim('upn');
  if (upns.length !== 1) return { refused: 'upn_claim_missing_or_repeated' };
  return { upn: upns[0], sid: claim('primarysid')[0] ?? null, audience };
}

/**
 * Starts the stand-in. `config`: { adfsIssuer, thumbprints, audiences, certFile }; it may be
 * changed later (`reconfigure`), as Set-OrganizationConfig would, once the gateway's address is
 * known.
 */
export async function startAdfsExchange(initial = {}) {
  let config = {
    adfsIssuer: '', thumbprints: [], audiences: [], certFile: '', ...initial,
  };
  const verdicts = [];
  const sessions = new Map(); // cookie value -> { upn, sid, vdirs }
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
    const realm = `https://${req.headers.host}${vdir}/`;
    const cookie = /(?:^|; )AdfsE2e=([^;]+)/.exec(req.headers.cookie || '')?.[1];
    const session = cookie && sessions.get(cookie);

    if (req.method === 'POST') {
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      if (form.get('wa') === 'wsignin1.0') {
        const verdict = await checkToken({
          wresult: form.get('wresult') || '', referer: req.headers.referer, realm, config,
        });
        verdicts.push({ vdir, ...verdict });
        if (verdict.refused) {
          return send(302, '', { location: `/owa/auth/errorfe.aspx?msg=WrongAudienceUriOrBadSigningCert&e2e=${verdict.refused}` });
        }
        const value = session?.upn === verdict.upn ? cookie : crypto.randomBytes(16).toString('hex');
        const entry = sessions.get(value) || { upn: verdict.upn, sid: verdict.sid, vdirs: [] };
        entry.vdirs.push(vdir);
        sessions.set(value, entry);
        const ru = new URLSearchParams(form.get('wctx') || '').get('ru') || `${vdir}/`;
        return send(302, '', {
          location: ru.startsWith('/') && !ru.startsWith('//') ? ru : `${vdir}/`,
          'set-cookie': `AdfsE2e=${value}; path=/; secure; HttpOnly`,
        });
      }
    }
    if (lower.startsWith('/owa/auth/errorfe.aspx')) {
      return send(200, `<h1 id="exchange-error">Something went wrong</h1><p>${escape(url.search)}</p>`);
    }
    if (session && session.vdirs.includes(vdir)) {
      const title = vdir === '/owa' ? 'Mailbox' : 'Exchange admin center';
      return send(200, `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${title}</title></head><body>
<h1 id="adfs-${vdir.slice(1)}">${title} of <span id="upn">${escape(session.upn)}</span></h1>
<p>SID <code id="sid">${escape(session.sid ?? '(none)')}</code></p>
<p><a id="adfs-sign-out" href="${escape(config.adfsIssuer)}?wa=wsignout1.0">Sign out</a></p></body></html>`);
    }
    // No session of its own here: to the issuer, as Exchange's AdfsFederationAuthModule does.
    const wctx = `rm=0&id=passive&ru=${encodeURIComponent(url.pathname + url.search)}`;
    const query = new URLSearchParams({ wa: 'wsignin1.0', wtrealm: realm, wctx });
    return send(302, '', { location: `${config.adfsIssuer}?${query}` });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    verdicts,
    reconfigure: (change) => { config = { ...config, ...change }; },
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}
