// The Kerberos lab of the `sso = "kerberos"` scenario, made of the same parts as
// tests/kerberos_delegation.rs: a Samba Active Directory domain controller provisioned by
// tests/kerberos/samba-lab.sh on a loopback address of its own (only its KDC runs), and
// tests/kerberos/exchange_standin.py, Exchange's OWA on Windows authentication with Extended
// Protection (it verifies each SPNEGO token with Exchange's keytab and the channel binding of
// its own certificate, and answers with the authenticated user).
//
// Without Samba the scenario is skipped with a message — except in CI (`CI` set), where .ci/run
// installs it and the scenario must run.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';

import { OUT, REPO, tempDir } from './harness.mjs';

export const REALM = 'CORP.CONTOSO.TEST';
export const GATEWAY_PRINCIPAL = `svc-mfagw@${REALM}`;
/** The name the gateway connects to Exchange by; HTTP/<it> is Exchange's SPN. */
export const EXCHANGE_NAME = 'mail.contoso.test';

/** Why the lab cannot run here, or null. Throws in CI, where it must run. */
export function kerberosLabMissing() {
  const found = spawnSync('samba-tool', ['--version'], { stdio: 'ignore' }).status === 0;
  const gssapi = spawnSync('/usr/bin/python3', ['-c', 'import gssapi'], { stdio: 'ignore' }).status === 0;
  const why = !found ? 'samba-tool is not installed' : !gssapi ? 'python3-gssapi is not installed' : null;
  if (why && process.env.CI) {
    throw new Error(`${why}, and CI is set: the Kerberos scenario must run in CI (apt-get install samba samba-ad-dc samba-ad-provision krb5-user winbind ldb-tools python3-gssapi)`);
  }
  return why && `SKIPPED: the Kerberos scenario needs a Samba AD DC and python3-gssapi (apt-get install samba samba-ad-dc samba-ad-provision krb5-user winbind ldb-tools python3-gssapi); ${why}`;
}

/** 127.0.0.N whose port 88 is free. */
async function freeLoopbackAddress() {
  const tryBind = (host) => new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(88, host, () => s.close(() => resolve(true)));
  });
  for (let step = 0; step < 200; step += 1) {
    const n = 2 + ((process.pid + step * 11) % 250);
    const host = `127.0.0.${n}`;
    if (await tryBind(host)) return host;
  }
  throw new Error('no loopback address 127.0.0.N has port 88 free');
}

async function waitForPort(host, port, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`samba exited (${child.exitCode}) before its KDC listened`);
    const open = await new Promise((resolve) => {
      const socket = net.connect(port, host);
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the KDC did not listen on ${host}:${port} within ${timeoutMs} ms`);
}

/**
 * Provisions the domain, gives the users `upns` ({ sAMAccountName: UPN }, the UPNs Entra
 * signs them in with), starts the KDC and the Exchange stand-in. Resolves to { kdc, keytab,
 * exchangeUrl, caFile, verdicts, stop() }.
 */
export async function startKerberosLab({ upns }) {
  const dir = tempDir('samba');
  const ip = await freeLoopbackAddress();
  execFileSync('bash', [path.join(REPO, 'tests/kerberos/samba-lab.sh'), dir, ip], { stdio: 'ignore' });
  // Alternative UPN suffixes, as users synchronised to Entra with their mail domain have.
  for (const [account, upn] of Object.entries(upns)) {
    execFileSync('ldbmodify', ['-H', path.join(dir, 'private/sam.ldb')], {
      input: `dn: CN=${account},CN=Users,DC=corp,DC=contoso,DC=test\nchangetype: modify\nreplace: userPrincipalName\nuserPrincipalName: ${upn}\n`,
      stdio: ['pipe', 'ignore', 'inherit'],
    });
  }
  const sambaLog = fs.openSync(path.join(OUT, 'logs', 'samba.log'), 'w');
  const samba = spawn('samba', ['-s', path.join(dir, 'etc/smb.conf'), '-i', '-M', 'single', '--debug-stdout'], {
    stdio: ['ignore', sambaLog, sambaLog],
    detached: true, // its own process group, stopped as a whole
  });
  const stopSamba = () => {
    try { process.kill(-samba.pid, 'SIGKILL'); } catch { /* gone already */ }
  };
  process.once('exit', stopSamba);
  const stopAll = [];
  try {
    await waitForPort(ip, 88, samba, 120000);

    // Exchange's certificate, issued by a CA of its own (the gateway's ca_file).
    const ca = path.join(dir, 'ca.pem');
    const caKey = path.join(dir, 'ca.key');
    const cert = path.join(dir, 'exchange.pem');
    const key = path.join(dir, 'exchange.key');
    const csr = path.join(dir, 'exchange.csr');
    const ext = path.join(dir, 'exchange.ext');
    const openssl = (args) => execFileSync('openssl', args, { stdio: 'ignore' });
    openssl(['req', '-x509', '-newkey', 'rsa:2048', '-sha256', '-nodes', '-days', '2', '-subj', '/CN=e2e Exchange CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign',
      '-keyout', caKey, '-out', ca]);
    openssl(['req', '-newkey', 'rsa:2048', '-sha256', '-nodes', '-subj', `/CN=${EXCHANGE_NAME}`, '-keyout', key, '-out', csr]);
    fs.writeFileSync(ext, `subjectAltName=DNS:${EXCHANGE_NAME}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
    openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2', '-sha256', '-extfile', ext, '-out', cert]);

    const standin = spawn('/usr/bin/python3', [path.join(REPO, 'tests/kerberos/exchange_standin.py'), cert, key, 'sha256'], {
      env: {
        ...process.env, KRB5_CONFIG: path.join(dir, 'krb5.conf'), KRB5_KTNAME: path.join(dir, 'exchange.keytab'),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    stopAll.push(() => standin.kill('SIGKILL'));
    const verdicts = [];
    const port = await new Promise((resolve, reject) => {
      const lines = readline.createInterface({ input: standin.stdout });
      lines.on('line', (line) => {
        const listening = /^listening (\d+)$/.exec(line);
        if (listening) resolve(Number(listening[1]));
        else {
          try { verdicts.push(JSON.parse(line)); } catch { /* not a verdict */ }
        }
      });
      standin.once('exit', (code) => reject(new Error(`the Exchange stand-in exited (${code})`)));
    });
    return {
      kdc: `${ip}:88`,
      keytab: path.join(dir, 'gateway.keytab'),
      exchangeUrl: `https://127.0.0.1:${port}`,
      caFile: ca,
      verdicts,
      stop: () => {
        for (const stop of stopAll) stop();
        stopSamba();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    for (const stop of stopAll) stop();
    stopSamba();
    throw error;
  }
}
