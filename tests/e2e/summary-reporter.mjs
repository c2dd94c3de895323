// A node:test reporter that counts the scenarios (leaf tests) that passed and failed and writes
// the counts as JSON to its destination; run.mjs reads them and prints the closing line.
export default async function* summary(source) {
  const counts = { passed: 0, failed: 0, skipped: 0, todo: 0, failures: [] };
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const { data } = event;
    // Suites (describe) and the per-file wrapper are not scenarios.
    if (data.details?.type === 'suite') continue;
    if (data.file && data.name === data.file) continue;
    if (data.skip) counts.skipped += 1;
    else if (data.todo) counts.todo += 1;
    else if (event.type === 'test:pass') counts.passed += 1;
    else {
      counts.failed += 1;
      counts.failures.push(data.name);
    }
  }
  yield `${JSON.stringify(counts)}\n`;
}
