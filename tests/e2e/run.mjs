// `npm test`: runs the suite with Node's built-in test runner (`node --test`, spec reporter on
// stdout) and ends with one line `N passed, M failed` for CI. Extra arguments go to node --test,
// e.g. `npm test -- --test-name-pattern=XHR`.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const summaryFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mfagw-e2e-summary-')), 'summary.json');
const started = Date.now();
const result = spawnSync(process.execPath, [
  '--test',
  '--test-reporter=spec', '--test-reporter-destination=stdout',
  `--test-reporter=${path.join(here, 'summary-reporter.mjs')}`, `--test-reporter-destination=${summaryFile}`,
  ...process.argv.slice(2),
  path.join(here, 'suite.test.mjs'),
  path.join(here, 'adfs.test.mjs'),
  path.join(here, 'exchange-session.test.mjs'),
  path.join(here, 'hma.test.mjs'),
  path.join(here, 'kerberos.test.mjs'),
], { cwd: here, stdio: 'inherit' });

let counts;
try {
  counts = JSON.parse(fs.readFileSync(summaryFile, 'utf8'));
} catch {
  counts = { passed: 0, failed: 1, failures: ['the test runner did not report (see above)'] };
}
fs.rmSync(path.dirname(summaryFile), { recursive: true, force: true });
const seconds = ((Date.now() - started) / 1000).toFixed(1);
console.log('');
if (counts.failures?.length) console.log(`failed: ${counts.failures.join('; ')}`);
console.log(`browser suite finished in ${seconds}s`);
if (counts.skipped) console.log(`${counts.skipped} skipped`);
if (counts.todo) console.log(`${counts.todo} todo: known gateway gaps, marked todo and not counted; see README.md`);
console.log(`${counts.passed} passed, ${counts.failed} failed`);
process.exit(counts.failed > 0 || result.status !== 0 ? 1 : 0);
