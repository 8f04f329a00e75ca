// training checkpoints of a model whose value table is sharded over 2 devices (sharing this
// machine's adapter): the files are one GPU's, so a checkpoint saved sharded resumes on one GPU and
// the reverse with exactly the state saved, and a sharded run stopped and resumed sharded has the
// losses of an uninterrupted one. (a sharded run's weight gradients differ from one GPU's by f32
// rounding, model/sharded_values.ts, so the two runs' checkpoints after training are not compared.)

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Gpu } from '../gpu/device.ts';
import { decodeSafetensors } from '../io/safetensors.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { tinyMemoryModel } from '../testing/llama.ts';
import { Rng } from '../testing/rng.ts';
import { historyOf, resumeTraining, saveTraining, trainLoop } from './loop.ts';
import { AdamW } from './optimizer.ts';
import { ShardedAdamW } from './sharded_optimizer.ts';

let second: Gpu | null = null;
after(() => second?.destroy());

async function devices(): Promise<[Gpu, Gpu]> {
  const gpu = await testGpu();
  second ??= await Gpu.create();
  return [gpu, second];
}

const config = tinyMemoryModel([1], 'bf16');
const rng = new Rng(5);
const train = Uint32Array.from({ length: 400 }, () => rng.int(32));
const optCfg = { lr: 1e-2, maxNorm: 0.5 };
const loop = { steps: 6, batch: 2, seqLen: 12, accum: 2, schedule: { warmup: 2, steps: 6, minRatio: 0.1 }, seed: 3, plot: false };

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'engram-sharded-ck-'));
}

const CHECKPOINT_FILES = ['model.safetensors', 'optimizer.safetensors', 'trainer.json', 'history.json'];

function assertSameFiles(a: string, b: string, what: string): void {
  for (const f of CHECKPOINT_FILES) assert.ok(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), `${what}: ${f} differs`);
}

test('a training checkpoint saved sharded resumes on one GPU, and one saved there resumes sharded, with exactly the state saved', async () => {
  const gpus = await devices();
  const [gpu] = gpus;
  const dir = tempDir();
  try {
    const model = await Transformer.create(gpu, config, 7, { valueGpus: gpus });
    const opt = await ShardedAdamW.create(gpu, model.params, model.shardedTable!, optCfg);
    await trainLoop(gpu, model, opt, { train }, { ...loop, steps: 3, dir: join(dir, 'sharded') });
    // the table's moments and masters, whole as one GPU's AdamW keeps them, and not all zero
    const st = decodeSafetensors(readFileSync(join(dir, 'sharded', 'optimizer.safetensors'))).tensors;
    for (const kind of ['m', 'v', 'master']) {
      const t = st[`values.0.${kind}`]!;
      assert.deepEqual(t.shape, [64, 16], kind);
      assert.ok(new Float32Array(t.data.slice().buffer).some((x) => x !== 0), `values.0.${kind} is all zero`);
    }

    // on one GPU: an AdamW at step 3, which saves the same files
    const one = await resumeTraining(gpu, join(dir, 'sharded'), optCfg);
    assert.ok(one.opt instanceof AdamW);
    assert.equal(one.model.shardedTable, null);
    assert.equal(one.opt.step, 3);
    await saveTraining(gpu, join(dir, 'one'), one.model, one.opt, { 'history.json': one.files['history.json']! });
    assertSameFiles(join(dir, 'sharded'), join(dir, 'one'), 'sharded, then resumed on one GPU');

    // and back: every inner optimizer at step 3, the same files again
    const back = await resumeTraining(gpu, join(dir, 'one'), optCfg, { valueGpus: gpus });
    assert.ok(back.opt instanceof ShardedAdamW);
    assert.deepEqual([back.opt.model, ...back.opt.shards].map((o) => o.step), [3, 3, 3]);
    await saveTraining(gpu, join(dir, 'back'), back.model, back.opt, { 'history.json': back.files['history.json']! });
    assertSameFiles(join(dir, 'one'), join(dir, 'back'), 'one GPU, then resumed sharded');

    // restore takes the table's state in any chunking (another device's): here three chunks of rows
    const saved = (await opt.stateBytes()).tensors;
    const rechunked = new Map<string, Uint8Array>();
    for (const [name, t] of Object.entries(saved)) {
      const m = /^values\.0\.(.+)$/.exec(name);
      if (!m) rechunked.set(name, t.data);
      else {
        const cuts = [0, 10, 47, 64].map((row) => row * 16 * 4);
        for (let c = 0; c + 1 < cuts.length; c++) rechunked.set(`values.${c}.${m[1]}`, t.data.subarray(cuts[c]!, cuts[c + 1]!));
      }
    }
    const fresh = await ShardedAdamW.create(gpu, back.model.params, back.model.shardedTable!, optCfg);
    fresh.restore(3, (name) => rechunked.get(name));
    const again = (await fresh.stateBytes()).tensors;
    assert.deepEqual(Object.keys(again).sort(), Object.keys(saved).sort());
    for (const [name, t] of Object.entries(saved)) assert.ok(Buffer.from(again[name]!.data).equals(t.data), `${name} after a restore from three chunks`);

    // a value state of another size is a clear error
    const short = (name: string) => (name === 'values.0.v' ? saved[name]!.data.subarray(64) : saved[name]?.data);
    assert.throws(() => fresh.restore(3, short), /ShardedAdamW.restore: the value table's optimizer state 'values.0.v', ... is 4032 bytes in 1 chunks; \[64, 16\] f32 needs 4096 bytes/);
    assert.throws(() => fresh.restore(3, (name) => (name.startsWith('values.') ? undefined : saved[name]?.data)), /'values.0.m', ... is missing/);

    for (const o of [opt, one.opt, back.opt, fresh]) o.dispose();
    for (const m of [model, one.model, back.model]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a sharded run stopped after 3 steps and resumed sharded has the losses of an uninterrupted 6-step sharded run; resumed on one GPU, nearly', async () => {
  const gpus = await devices();
  const [gpu] = gpus;
  const dir = tempDir();
  try {
    const m1 = await Transformer.create(gpu, config, 7, { valueGpus: gpus });
    const o1 = await ShardedAdamW.create(gpu, m1.params, m1.shardedTable!, optCfg);
    const full = await trainLoop(gpu, m1, o1, { train }, loop);
    assert.equal(full.length, 6);

    const m2 = await Transformer.create(gpu, config, 7, { valueGpus: gpus });
    const o2 = await ShardedAdamW.create(gpu, m2.params, m2.shardedTable!, optCfg);
    const first = await trainLoop(gpu, m2, o2, { train }, { ...loop, dir, stop: () => o2.step === 3 });
    assert.deepEqual(first, full.slice(0, 3));

    const r = await resumeTraining(gpu, dir, optCfg, { valueGpus: gpus });
    assert.equal(r.opt.step, 3);
    const rest = await trainLoop(gpu, r.model, r.opt, { train }, { ...loop, history: historyOf(r.files) });
    assert.deepEqual([...first, ...rest], full, 'resumed sharded');

    // on one GPU the weight gradients differ by f32 rounding: the losses agree closely, not exactly
    const one = await resumeTraining(gpu, dir, optCfg);
    const oneRest = await trainLoop(gpu, one.model, one.opt, { train }, loop);
    oneRest.forEach((x, i) => assert.ok(Math.abs(x - rest[i]!) <= 1e-4 * (1 + Math.abs(x)), `step ${i + 4}: ${x} on one GPU against ${rest[i]} sharded`));

    for (const o of [o1, o2, r.opt, one.opt]) o.dispose();
    for (const m of [m1, m2, r.model, one.model]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
