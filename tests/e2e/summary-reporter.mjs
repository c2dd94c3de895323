// A node:test reporter that counts the scenarios (leaf tests) that passed and failed and writes
// the counts as JSON to its destination; run.mjs reads them and prints the closing line.
export default async function* summary(source) {
  const counts = {
    passed: 0, failed: 0, skipped: 0, todo: 0, failures: [],
  };
  let previousNesting = -1;
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const { data } = event;
    // A test reported after deeper ones is their parent (suite or test with subtests): the
    // scenarios are the leaves.
    const parent = data.nesting < previousNesting || data.details?.type === 'suite';
    previousNesting = data.nesting;
    if (parent) continue;
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
