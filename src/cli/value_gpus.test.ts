// `engram train --value-gpus N --value-gpus-shared`: a new run, its resumption and --init with the
// value table sharded over devices sharing this machine's adapter; clear errors for a width that N
// does not divide and for a model without memory layers, also from the command line.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, mock, test } from 'node:test';
import { promisify } from 'node:util';
import { testGpu } from '../testing/gpu.ts';
import { trainCommand, writeTokenData, type TrainArgs } from './commands.ts';

let root = '';
let args: TrainArgs;
const model = (vocabSize: number, memory: boolean) => ({
  vocabSize,
  dim: 16,
  layers: 2,
  heads: 2,
  ffnHidden: 32,
  maxSeqLen: 16,
  ...(memory ? { memory: { layers: [1], nKeys: 8, heads: 2, topk: 4, keyDim: 8, valueDtype: 'f32' } } : {}),
});

before(async () => {
  await testGpu(); // no adapter: a loud failure
  root = await mkdtemp(join(tmpdir(), 'engram-value-gpus-'));
  const docs = Array.from({ length: 40 }, (_, i) => `The river ${i} runs to the sea, and the sea takes ${i % 7} ships.`);
  const tok = await writeTokenData(join(root, 'data'), { train: docs, val: docs.slice(0, 8) }, 300);
  await writeFile(join(root, 'memory.json'), JSON.stringify(model(tok.vocabSize, true)));
  await writeFile(join(root, 'dense.json'), JSON.stringify(model(tok.vocabSize, false)));
  args = { data: join(root, 'data'), out: join(root, 'run'), config: join(root, 'memory.json'), steps: 2, batch: 2, seq: 16, accum: 1, lr: 1e-3, warmup: 1, evalEvery: 0, saveEvery: 0, seed: 0, valueGpus: 2, valueGpusShared: true };
});
after(() => rm(root, { recursive: true, force: true }));

/** what trainCommand prints (console.log) */
async function printed(a: TrainArgs): Promise<string> {
  const log = mock.method(console, 'log', () => {});
  try {
    await trainCommand(a);
    return log.mock.calls.map((c) => c.arguments.join(' ')).join('\n');
  } finally {
    log.mock.restore();
  }
}

const step = async (dir: string) => (JSON.parse(await readFile(join(dir, 'trainer.json'), 'utf8')) as { step: number }).step;

test('engram train --value-gpus 2 --value-gpus-shared: a new run, resumed, and --init from it, each sharded', async () => {
  const fresh = await printed(args);
  assert.match(fresh, /values: 64 x 16 f32 sharded by columns over 2 GPUs, exchanging f32 blocks\n {2}shard 0: columns \[0, 8\) on .+ \(the model's GPU\)\n {2}shard 1: columns \[8, 16\) on /);
  assert.equal(await step(args.out), 2);
  // resumed with bf16 exchanges (a run's checkpoint does not depend on how the shards exchange)
  const resumed = await printed({ ...args, steps: 3, valueExchange: 'bf16' });
  assert.match(resumed, /resuming .+ at step 2/);
  assert.match(resumed, /exchanging bf16 blocks/);
  assert.match(resumed, /shard 1: columns \[8, 16\)/);
  assert.equal(await step(args.out), 3);
  const init = await printed({ ...args, init: args.out, out: join(root, 'init'), steps: 1 });
  assert.match(init, /starting from [^\n]+\n[^]*shard 0: columns \[0, 8\)/);
  assert.equal(await step(join(root, 'init')), 1);
});

test('engram train --value-gpus: a width N does not divide, a model without memory layers: clear errors, no stack from the command line', async () => {
  await assert.rejects(trainCommand({ ...args, out: join(root, 'three'), valueGpus: 3 }), /value width 16 must be a multiple of the 3 GPUs/);
  await assert.rejects(trainCommand({ ...args, out: join(root, 'dense'), config: join(root, 'dense.json') }), /valueGpus shards the memory value table, and this model has no memory layers/);
  await assert.rejects(trainCommand({ ...args, out: join(root, 'half'), valueGpus: 1.5 }), /--value-gpus: expected a whole number of GPUs >= 1, got 1.5/);
  await assert.rejects(trainCommand({ ...args, out: join(root, 'f16'), valueExchange: 'f16' }), /--value-exchange: expected f32 or bf16, got 'f16'/);
  const bin = join(import.meta.dirname, '../../bin/engram.js');
  const cli = ['train', '--data', args.data, '--out', join(root, 'cli'), '--config', args.config, '--steps', '1', '--seq', '16', '--value-gpus', '3', '--value-gpus-shared'];
  const fail = await promisify(execFile)(process.execPath, [bin, ...cli]).then(
    () => null,
    (e: { code: number; stderr: string }) => e,
  );
  assert.equal(fail?.code, 1);
  assert.match(fail?.stderr ?? '', /^engram train: ShardedValueTable: the value width 16 must be a multiple of the 3 GPUs \(each holds dim \/ 3 columns\)$/m);
  assert.doesNotMatch(fail?.stderr ?? '', /\n\s+at /, 'no stack trace');
});
