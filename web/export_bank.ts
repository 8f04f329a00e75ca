// writes a memory bank (a LanceDB folder, `engram memory build`) as one export file for the demo
// (memory3/export.ts), opened with the model it was built for (the manifest's):
// node --import tsx web/export_bank.ts --bank <bank folder> --out <file> [--limit <n>]

import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { MemoryBank } from '../src/memory3/bank.ts';
import { exportBank } from '../src/memory3/export.ts';

const { values } = parseArgs({ options: { bank: { type: 'string' }, out: { type: 'string' }, limit: { type: 'string' } } });
if (!values.bank || !values.out) {
  console.error('usage: node --import tsx web/export_bank.ts --bank <bank folder> --out <file> [--limit <references>]');
  process.exit(2);
}
const manifest = await MemoryBank.manifestAt(values.bank);
if (!manifest) {
  console.error(`no memory bank at ${values.bank}: build one with \`engram memory build --model <checkpoint> --from <references.txt>\``);
  process.exit(1);
}
const bank = await MemoryBank.open(values.bank, { model: MemoryBank.modelOf(manifest) });
try {
  const bytes = await exportBank(bank, values.limit === undefined ? {} : { limit: Number(values.limit) });
  await writeFile(values.out, bytes);
  console.log(`${values.out}: ${(bytes.length / 1024).toFixed(1)} KiB, ${Math.min(await bank.count(), values.limit === undefined ? Infinity : Number(values.limit))} references of ${values.bank}`);
} finally {
  bank.close();
}
