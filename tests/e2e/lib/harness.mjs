// Starting and stopping what the suite uses: free ports, the provider process, gateways from the
// built binary with their TOML written to a temporary directory, and Chromium.

import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..', '..');
/** Screenshots and logs: target/e2e/ at the repository root. */
export const OUT = path.join(REPO, 'target', 'e2e');
// Each run starts with empty logs and no screenshots of an earlier run's failures.
fs.rmSync(path.join(OUT, 'logs'), { recursive: true, force: true });
fs.mkdirSync(path.join(OUT, 'logs'), { recursive: true });
for (const f of fs.readdirSync(OUT)) {
  if (f.startsWith('failed-') && f.endsWith('.png')) fs.rmSync(path.join(OUT, f));
}

export const TENANT = '3f2a9b1c-5d4e-4f60-8a7b-1c2d3e4f5a6b';
export const ADMINS_GROUP = '5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9';

/** The flags issue 5 lists; a fresh --user-data-dir is given per browser. */
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** MFA_GATEWAY_BIN, else the newer of target/release and target/debug (a stale build is not
 * picked over a fresh one). */
export function gatewayBinary() {
  const candidates = process.env.MFA_GATEWAY_BIN
    ? [process.env.MFA_GATEWAY_BIN]
    : ['release', 'debug'].map((p) => path.join(REPO, 'target', p, 'mfa-gateway'));
  const [found] = candidates
    .filter((c) => fs.existsSync(c))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (!found) {
    throw new Error(`no mfa-gateway binary at ${candidates.join(' or ')}: run \`cargo build --release --bin mfa-gateway\` first (or set MFA_GATEWAY_BIN)`);
  }
  return found;
}

/** A port nobody listens on right now, on 127.0.0.1. */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `mfagw-e2e-${prefix}-`));
}

export const randomSecret = (bytes = 32) => crypto.randomBytes(bytes).toString('base64');

async function waitFor(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

function logTo(name) {
  const file = path.join(OUT, 'logs', `${name}.log`);
  return { file, stream: fs.createWriteStream(file) };
}

function stopChild(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

/**
 * Starts the Entra-like provider in its own process. `clients` are oidc-provider client
 * metadata; `host` is the name in its issuer (the browser's view). Resolves to { port, issuer,
 * base, requests(), tokens(), keyIds(), rotate(), jwks(), stop() }.
 */
export async function startProvider({
  name = 'provider', clients, port = 0, host = '127.0.0.1',
}) {
  const dir = tempDir(name);
  const configFile = path.join(dir, 'provider.json');
  fs.writeFileSync(configFile, JSON.stringify({
    port, host, tenant: TENANT, clients,
  }));
  const log = logTo(name);
  const child = spawn(process.execPath, [path.join(HERE, 'provider.mjs'), configFile], {
    cwd: path.join(HERE, '..'),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stderr.pipe(log.stream);
  const ready = await new Promise((resolve, reject) => {
    let buffered = '';
    const onData = (d) => {
      buffered += d;
      const line = buffered.split('\n').find((l) => l.startsWith('{"ready"'));
      if (line) {
        child.stdout.off('data', onData);
        child.stdout.pipe(log.stream);
        resolve(JSON.parse(line));
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', (code) => reject(new Error(`provider exited (${code}) before it was ready; see ${log.file}`)));
    setTimeout(() => reject(new Error(`provider not ready after 20s; see ${log.file}`)), 20000).unref();
  });
  // What the browser sees, and where the suite reads the provider's records.
  const base = `http://${host}:${ready.port}`;
  const control = `http://127.0.0.1:${ready.port}`;
  const getJson = async (p, init) => {
    const r = await fetch(control + p, init);
    if (!r.ok) throw new Error(`${p}: ${r.status}`);
    return r.json();
  };
  return {
    port: ready.port,
    issuer: ready.issuer,
    base,
    log: log.file,
    requests: () => getJson('/__e2e/requests'),
    tokens: () => getJson('/__e2e/tokens'),
    keyIds: () => getJson('/__e2e/keys'),
    rotate: () => getJson('/__e2e/rotate', { method: 'POST' }),
    jwks: () => getJson(`/${TENANT}/jwks`),
    stop: async () => {
      await stopChild(child, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** oidc-provider client metadata for one gateway registration. */
export function clientFor({
  clientId, secret, method, gatewayPorts,
}) {
  return {
    client_id: clientId,
    client_secret: secret,
    client_name: 'mfa-gateway (Outlook on the web)',
    token_endpoint_auth_method: method,
    redirect_uris: gatewayPorts.map((p) => `http://127.0.0.1:${p}/_gateway/callback`),
    post_logout_redirect_uris: gatewayPorts.map((p) => `http://127.0.0.1:${p}/_gateway/signed-out`),
    response_types: ['code'],
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'RS256',
  };
}

/**
 * A self-signed certificate and its RSA key, made by openssl in `dir`: { cert, key, certPem }.
 * `dns` names go into subjectAltName (a TLS server certificate); without them it is a plain
 * signing certificate.
 */
export function makeCertificate(dir, name, { cn, dns = [] }) {
  const cert = path.join(dir, `${name}.pem`);
  const key = path.join(dir, `${name}.key`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-sha256', '-nodes', '-days', '2', '-subj', `/CN=${cn}`,
    ...(dns.length ? ['-addext', `subjectAltName=${dns.map((d) => `DNS:${d}`).join(',')}`] : []),
    '-keyout', key, '-out', cert,
  ], { stdio: 'ignore' });
  fs.chmodSync(key, 0o600);
  return { cert, key, certPem: fs.readFileSync(cert, 'utf8') };
}

/** The status of a GET, over TLS without checking the (self-signed) certificate. */
function probeTls(url, servername) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    https.get({
      host: '127.0.0.1', port: u.port, path: u.pathname, servername, rejectUnauthorized: false,
      headers: { host: u.host },
    }, (res) => {
      res.resume();
      resolve(res.statusCode);
    }).on('error', reject);
  });
}

/**
 * Starts `mfa-gateway run` with a configuration written to a temporary directory, and waits until
 * it is ready (provider metadata and keys loaded, Exchange healthy). `ecp` and `owa` are extra
 * TOML of those routes, `extra` of the file; `lifetime` and `idleTimeout` those of [session];
 * `upstream` replaces the body of [upstreams.exchange] (the sample Exchange on `exchangePort`). With `tls` ({ cert, key }) the gateway listens for
 * HTTPS only and publishes `host`.
 */
export async function startGateway({
  name, port, issuer, clientId, secret, method, sessionKeys, exchangePort, ecp = '', owa = '',
  extra = '', host = '127.0.0.1', tls = null, lifetime = '10h', idleTimeout = '1h', upstream = null,
}) {
  const dir = tempDir(name);
  fs.writeFileSync(path.join(dir, 'client-secret'), `${secret}\n`, { mode: 0o600 });
  const keyFiles = sessionKeys.map((key, i) => {
    const f = path.join(dir, `session-${i}.key`);
    fs.writeFileSync(f, `${key}\n`, { mode: 0o600 });
    return f;
  });
  const adminPort = await freePort();
  const toml = `# written by tests/e2e for gateway ${name}
[server]
${tls ? 'https_listen' : 'http_listen'} = "127.0.0.1:${port}"
admin_listen = "127.0.0.1:${adminPort}"
shutdown_grace = "0s"
${tls ? `
[[tls.certificates]]
cert = "${tls.cert}"
key = "${tls.key}"
` : ''}
[oidc]
issuer = "${issuer}"
client_id = "${clientId}"
client_secret = { file = "${path.join(dir, 'client-secret')}" }
client_secret_method = "${method}"
response_mode = "form_post"
allowed_tenants = ["${TENANT}"]

[mfa]
amr_any_of = ["mfa", "ngcmfa"]
max_auth_age = "12h"

[session]
keys = [${keyFiles.map((f) => `{ file = "${f}" }`).join(', ')}]
lifetime = "${lifetime}"
idle_timeout = "${idleTimeout}"

[upstreams.exchange]
${upstream ?? `servers = ["http://127.0.0.1:${exchangePort}"]
health_check = { path = "/owa/healthcheck.htm", interval = "5s", timeout = "2s" }`}

[[routes]]
host = "${host}"
path = "/owa"
upstream = "exchange"
access = "mfa"
unauthenticated_status = 440
${owa}

[[routes]]
host = "${host}"
path = "/owa/healthcheck.htm"
upstream = "exchange"
access = "public"

[[routes]]
host = "${host}"
path = "/ecp"
upstream = "exchange"
access = "mfa"
${ecp}
${extra}
`;
  const configFile = path.join(dir, 'gateway.toml');
  fs.writeFileSync(configFile, toml);
  const log = logTo(name);
  const child = spawn(gatewayBinary(), ['run', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  child.stdout.pipe(log.stream);
  child.stderr.pipe(log.stream);
  let exited = null;
  child.once('exit', (code, signal) => { exited = code ?? signal; });
  const admin = `http://127.0.0.1:${adminPort}`;
  const origin = tls ? `https://${host}:${port}` : `http://127.0.0.1:${port}`;
  // Ready for the suite: the load balancer's probe /_gateway/health says 200, which needs the
  // provider's metadata and keys (the admin /readyz does not wait for those), and /readyz too.
  await waitFor(`gateway ${name} to be ready (log: ${log.file})`, async () => {
    if (exited !== null) throw new Error(`gateway ${name} exited (${exited}); see ${log.file}`);
    const health = tls
      ? await probeTls(`${origin}/_gateway/health`, host)
      : (await fetch(`${origin}/_gateway/health`)).status;
    if (health !== 200) return false;
    return (await fetch(`${admin}/readyz`)).status === 200;
  });
  return {
    name,
    port,
    origin,
    admin,
    configFile,
    log: log.file,
    logText: () => fs.readFileSync(log.file, 'utf8'),
    stop: async () => {
      await stopChild(child);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A Chromium of its own, with a fresh profile directory and `extraArgs` after the standard
 * flags: { context, page, close() }. */
export async function launchBrowser(extraArgs = []) {
  const userDataDir = tempDir('chromium');
  // Exactly the listed flags: Playwright's own defaults are left out (ignoreDefaultArgs), so the
  // profile directory and the pipe Playwright drives the browser through are given here.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreDefaultArgs: true,
    args: [...CHROMIUM_FLAGS, ...extraArgs, `--user-data-dir=${userDataDir}`, '--remote-debugging-pipe', 'about:blank'],
    viewport: { width: 1100, height: 720 },
  });
  context.setDefaultTimeout(15000);
  context.setDefaultNavigationTimeout(20000);
  const page = context.pages()[0] || await context.newPage();
  return {
    context,
    page,
    close: async () => {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}
