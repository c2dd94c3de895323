// A sample Exchange 2019 stand-in for the browser suite: it serves OWA- and ECP-like pages and
// records every request it receives (method, url, headers), so that the tests can prove what
// reached Exchange — and, above all, what never did.
//
//   /owa/healthcheck.htm, /ecp/healthcheck.htm   the load balancer's probe (as Exchange answers it)
//   /owa/ …                                     an OWA-like mailbox page; sets Exchange's own
//                                               cookies cadata (HttpOnly) and X-OWA-CANARY
//                                               (read by script), as OWA's forms auth does;
//                                               shows whose mailbox it is when cadata names a user
//   POST /owa/auth.owa                          OWA's logon form: cadata names the `username`
//                                               posted, then back to /owa/
//   /owa/ev.owa2?ns=PendingRequest…             OWA's notification poll: JSON
//   /owa/service.svc?action=…                   OWA's XHR endpoint: JSON
//   /owa/logoff.owa                             OWA sign-out: clears cadata and X-OWA-CANARY
//   /ecp/ …                                     an Exchange admin center page
//   /ecp/logoff.aspx                            ECP sign-out, leads to /owa/logoff.owa

import crypto from 'node:crypto';
import http from 'node:http';

const STYLE = `
  body{font-family:"Segoe UI",Arial,sans-serif;margin:0;color:#1b1b1b;background:#faf9f8}
  header{background:#0078d4;color:#fff;padding:10px 20px;font-size:18px;display:flex;justify-content:space-between}
  main{display:flex} nav{width:200px;padding:16px;background:#f3f2f1;min-height:420px}
  nav div{padding:6px 8px} nav div.sel{background:#c7e0f4;font-weight:600}
  section{flex:1;padding:16px 24px} .mail{background:#fff;border-bottom:1px solid #e1dfdd;padding:10px 14px}
  .mail b{display:block} code{background:#eee;padding:2px 4px;font-size:12px;word-break:break-all}`;

/** The user a forms logon's cadata names ("u." + base64url of the user name), or null. */
function mailboxOwner(cookies) {
  const m = cookies.match(/(?:^|; )cadata=u\.([A-Za-z0-9_-]+)/);
  return m ? Buffer.from(m[1], 'base64url').toString('utf8') : null;
}

function owaPage(url, method, owner) {
  const mails = [
    ['Contoso IT', 'Your mailbox is published through mfa-gateway'],
    ['Alice Admin', 'Quarterly numbers'],
    ['Service Desk', 'Multifactor authentication is now required outside the office'],
  ].map(([from, subject]) => `<div class="mail"><b>${from}</b>${subject}</div>`).join('');
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Mail - Outlook</title><style>${STYLE}</style></head>
<body><header><span>Outlook</span><span>ex01.e2e.contoso.local</span></header>
<main><nav><div class="sel">Inbox</div><div>Sent Items</div><div>Drafts</div><div>Deleted Items</div></nav>
<section><h1 id="owa-inbox">Inbox</h1><p>Mailbox of <b id="mailbox-owner">${escape(owner || 'nobody')}</b></p>${mails}
<p>Exchange received: <code id="received">${method} ${escape(url)}</code></p>
<p>Canary seen by script: <code id="canary"></code></p>
<script>document.getElementById('canary').textContent =
  (document.cookie.match(/(?:^|; )X-OWA-CANARY=([^;]*)/) || [,'none'])[1];</script>
</section></main></body></html>`;
}

function ecpPage(url, method) {
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Exchange admin center</title><style>${STYLE}</style></head>
<body><header><span>Exchange admin center</span><span>ex01.e2e.contoso.local</span></header>
<main><nav><div class="sel">recipients</div><div>permissions</div><div>mail flow</div></nav>
<section><h1 id="ecp-home">Exchange admin center</h1>
<p>Exchange received: <code id="received">${method} ${escape(url)}</code></p></section></main></body></html>`;
}

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export async function startExchange() {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    requests.push({
      at: Date.now(),
      method: req.method,
      url: req.url,
      headers: { ...req.headers },
      bodyLength: Buffer.concat(chunks).length,
    });
    const path = req.url.split('?')[0].toLowerCase();
    const cookies = req.headers.cookie || '';
    const html = (status, body, extra = {}) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache, no-store', ...extra });
      res.end(body);
    };

    if (path === '/owa/healthcheck.htm' || path === '/ecp/healthcheck.htm') {
      return html(200, '<html><body><h2>200 OK</h2><br/>ex01.e2e.contoso.local</body></html>');
    }
    if (path === '/owa/logoff.owa') {
      return html(302, '', {
        location: '/owa/auth/logoff.aspx?Cmd=logoff&src=exch',
        'set-cookie': [
          'cadata=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/; HttpOnly',
          'X-OWA-CANARY=; expires=Thu, 01-Jan-1970 00:00:00 GMT; path=/',
        ],
      });
    }
    if (path === '/ecp/logoff.aspx') {
      return html(302, '', { location: '/owa/logoff.owa' });
    }
    if (req.method === 'POST' && path === '/owa/auth.owa') {
      const user = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('username') || '';
      return html(302, '', {
        location: '/owa/',
        'set-cookie': [`cadata=u.${Buffer.from(user).toString('base64url')}; path=/; HttpOnly`],
      });
    }
    if (path === '/owa/ev.owa2') {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
      return res.end(JSON.stringify({ notifications: [] }));
    }
    if (path.startsWith('/owa/service.svc')) {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
      return res.end(JSON.stringify({ exchange: true, action: new URL(req.url, 'http://x').searchParams.get('action') }));
    }
    if (path === '/owa' || path.startsWith('/owa/')) {
      const setCookies = [];
      if (!/(^|; )cadata=/.test(cookies)) {
        setCookies.push(`cadata=${crypto.randomBytes(24).toString('base64url')}; path=/; HttpOnly`);
      }
      if (!/(^|; )X-OWA-CANARY=/.test(cookies)) {
        setCookies.push(`X-OWA-CANARY=${crypto.randomBytes(24).toString('hex')}; path=/`);
      }
      return html(200, owaPage(req.url, req.method, mailboxOwner(cookies)), setCookies.length ? { 'set-cookie': setCookies } : {});
    }
    if (path === '/ecp' || path.startsWith('/ecp/')) {
      return html(200, ecpPage(req.url, req.method));
    }
    return html(404, '<h1>404 - File or directory not found.</h1>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    /** Requests other than the gateway's health probes. */
    browserRequests: (since = 0) => requests.filter(
      (r) => r.at >= since && !/^\/(owa|ecp)\/healthcheck\.htm/i.test(r.url),
    ),
    close: () => new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }),
  };
}
