// a training run killed (SIGKILL) while it saves a checkpoint resumes from its last complete
// checkpoint, exactly. a real run in a child process (tests/fixtures/train_child.ts: a model with a
// Memory+ block, a checkpoint after every step) is killed at each point of the atomic write protocol
// (io/checkpoint.ts: files being written, manifest, between the two renames, before the old folder
// is removed), during its very first save, and from outside at whatever moment the signal lands (as
// a save starts; as its temp folder appears). then, in this process: resumeTraining on the run folder
// gives the step of a checkpoint that finished saving (or of the one being saved, where the kill came
// once its new folder was complete), training on from there gives the losses of an uninterrupted run
// (model and optimizer state are that step's, bit for bit), the next saves succeed and remove the dead
// writer's folders; with no complete checkpoint at all, the error says so.
// and, at the training level, what model/checkpoint.test.ts does not cover (it has a flipped byte in
// model.safetensors and a config whose ffnHidden does not fit the tensors, through loadModel): a
// flipped byte in optimizer.safetensors or trainer.json, a config.json whose dim does not fit, optimizer
// state that does not fit the model, and a model-only checkpoint, each a clear error from resumeTraining.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, watch } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import type { Gpu } from '../src/gpu/device.ts';
import { EngramError } from '../src/gpu/errors.ts';
import { CheckpointError, readCheckpoint, writeCheckpoint } from '../src/io/checkpoint.ts';
import { decodeSafetensors, encodeSafetensors, type SafeTensor } from '../src/io/safetensors.ts';
import { saveModel } from '../src/model/checkpoint.ts';
import { Transformer } from '../src/model/transformer.ts';
import { testGpu } from '../src/testing/gpu.ts';
import { historyOf, resumeTraining, saveTraining, trainLoop } from '../src/train/loop.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { RUN, type ChildArgs, type KillPoint } from './fixtures/train_child.ts';

const CHILD = fileURLToPath(new URL('./fixtures/train_child.ts', import.meta.url));
const root = await mkdtemp(join(tmpdir(), 'engram-train-kill-'));
after(() => rm(root, { recursive: true, force: true }));

let n = 0;
/** a fresh parent folder per case: the run folder and the siblings a writer leaves live in it */
function fresh(): { parent: string; dir: string } {
  const parent = join(root, `case${n++}`);
  mkdirSync(parent);
  return { parent, dir: join(parent, 'run') };
}

interface ChildRun {
  pid: number;
  signal: NodeJS.Signals | null;
  code: number | null;
  stderr: string;
  /** the steps whose save began ("saving <step>"), and those whose save completed, with their losses */
  saving: number[];
  saved: Map<number, number>;
}

/**
 * Runs the child to its end. `kill`: SIGKILL it from here once it prints `afterLine`, and with
 * `folder`, only once a temp folder of a checkpoint write shows up in `folder` after that line.
 */
function runChild(args: ChildArgs, kill?: { afterLine: string; folder?: string }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(args)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: ChildRun = { pid: child.pid!, signal: null, code: null, stderr: '', saving: [], saved: new Map() };
    let armed = false;
    const isTemp = (name: string | null) => name !== null && /^run\.tmp-/.test(name);
    // any temp folder event once armed: normally the new folder of the save under way (an event that
    // comes late, for the previous save's, kills it a little earlier: a kill all the same)
    const watcher = kill?.folder
      ? watch(kill.folder, (_, name) => {
          if (armed && isTemp(name)) child.kill('SIGKILL');
        })
      : undefined;
    let buf = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const m = /^(saving|saved) (\d+)(?: (.+))?$/.exec(line);
        if (m?.[1] === 'saving') out.saving.push(Number(m[2]));
        if (m?.[1] === 'saved') out.saved.set(Number(m[2]), JSON.parse(m[3]!) as number);
        if (line === kill?.afterLine) {
          armed = true;
          if (!kill.folder || readdirSync(kill.folder).some(isTemp)) child.kill('SIGKILL');
        }
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => (out.stderr += chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      watcher?.close();
      resolve({ ...out, code, signal });
    });
  });
}

// the children run side by side (a few at a time), started when the file loads, while the tests
// take their turns: most of a child's time is its start and its pipelines' compilation
const SIDE_BY_SIDE = 2;
let active = 0;
const waiting: (() => void)[] = [];
async function inTurn<T>(f: () => Promise<T>): Promise<T> {
  while (active >= SIDE_BY_SIDE) await new Promise<void>((r) => waiting.push(r));
  active++;
  try {
    return await f();
  } finally {
    active--;
    waiting.shift()?.();
  }
}

/** a child started now in a fresh folder (see runChild) */
function started(kill?: ChildArgs['kill'], external?: { afterLine: string; watchFolder?: boolean }): { parent: string; dir: string; run: Promise<ChildRun> } {
  const { parent, dir } = fresh();
  const outside = external && { afterLine: external.afterLine, ...(external.watchFolder && { folder: parent }) };
  const run = inTurn(() => runChild({ dir, ...(kill && { kill }) }, outside));
  run.catch(() => undefined); // awaited by its test; not an unhandled rejection before that
  return { parent, dir, run };
}

/** the folders next to the run folder, with the dead writer's pid written as <pid> */
async function siblings(parent: string, pid: number): Promise<string[]> {
  return (await readdir(parent)).map((f) => f.replace(`-${pid}-`, '-<pid>-').replace(/-[0-9a-f]+$/, '')).sort();
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const trainerStep = async (dir: string) => (JSON.parse(new TextDecoder().decode((await readCheckpoint(dir))['trainer.json'])) as { step: number }).step;

/** the uninterrupted run's step losses, and its model and optimizer at the end, trained here */
let reference: Promise<{ losses: number[]; model: Transformer; opt: AdamW }> | undefined;
function uninterrupted(gpu: Gpu) {
  reference ??= (async () => {
    const model = await Transformer.create(gpu, RUN.config, RUN.modelSeed);
    const opt = await AdamW.create(gpu, model.params, RUN.optimizer);
    const losses = await trainLoop(gpu, model, opt, { train: RUN.train }, RUN.loop);
    return { losses, model, opt };
  })();
  return reference;
}
after(async () => {
  const r = await reference?.catch(() => undefined);
  r?.opt.dispose();
  r?.model.dispose();
});

/**
 * The checks after a kill: the run resumes at `want` with the losses of the uninterrupted run from
 * there, its next saves succeed, and they leave nothing but the run folder.
 */
async function resumeAndFinish(gpu: Gpu, parent: string, dir: string, run: ChildRun, want: number): Promise<void> {
  const ref = await uninterrupted(gpu);
  // the child ran the same run: its completed steps have the uninterrupted run's losses
  for (const [step, loss] of run.saved) assert.equal(loss, ref.losses[step - 1], `child's loss at step ${step}`);
  const r = await resumeTraining(gpu, dir, RUN.optimizer);
  try {
    assert.equal(r.opt.step, want, 'resumed at the last complete checkpoint');
    assert.deepEqual(historyOf(r.files).map((p) => p.loss), ref.losses.slice(0, want), 'its history is of the same steps');
    // model and optimizer state are step `want`'s exactly: the rest of the run is the uninterrupted one
    const rest = await trainLoop(gpu, r.model, r.opt, { train: RUN.train }, { ...RUN.loop, dir, saveEvery: 1, history: historyOf(r.files) });
    assert.deepEqual(rest, ref.losses.slice(want));
  } finally {
    r.opt.dispose();
    r.model.dispose();
  }
  assert.deepEqual(await readdir(parent), ['run'], 'the next save removed the dead writer\'s folders');
  const end = await readCheckpoint(dir);
  assert.equal(JSON.parse(new TextDecoder().decode(end['trainer.json'])).step, RUN.loop.steps);
  assert.deepEqual(historyOf(end).map((p) => [p.step, p.loss]), ref.losses.map((l, i) => [i + 1, l]), 'one history, no step lost or repeated');
}

// where each kill point leaves the folder, and the step a resume must find: a kill before the new
// checkpoint's manifest is written keeps the previous step; once the manifest is there, the new one is
// complete (between the renames, readCheckpoint reads it from its temp folder)
const KILLS: { step: number; at: KillPoint; left: string[]; want: number; inTemp?: { has: string[]; lacks: string[] } }[] = [
  // the new step's model is on disk, its optimizer state is not: a mix that must never be read
  { step: 2, at: 'write', left: ['run', 'run.tmp-<pid>'], want: 1, inTemp: { has: ['model.safetensors'], lacks: ['optimizer.safetensors', 'checksums.json'] } },
  { step: 2, at: 'manifest', left: ['run', 'run.tmp-<pid>'], want: 1, inTemp: { has: ['model.safetensors', 'optimizer.safetensors', 'trainer.json'], lacks: ['checksums.json'] } },
  { step: 3, at: 'swap', left: ['run.old-<pid>', 'run.tmp-<pid>'], want: 3 },
  { step: 3, at: 'cleanup', left: ['run', 'run.old-<pid>'], want: 3 },
];

for (const k of KILLS) {
  const child = started({ step: k.step, at: k.at });
  test(`a run killed during the save of step ${k.step} (${k.at}) resumes at step ${k.want}, exactly`, async () => {
    const gpu = await testGpu();
    const { parent, dir } = child;
    const run = await child.run;
    assert.equal(run.signal, 'SIGKILL', `the child should have killed itself; exit ${run.code}: ${run.stderr}`);
    assert.deepEqual(run.saving, Array.from({ length: k.step }, (_, i) => i + 1));
    assert.deepEqual([...run.saved.keys()], Array.from({ length: k.step - 1 }, (_, i) => i + 1));
    assert.deepEqual(await siblings(parent, run.pid), k.left, 'the kill landed where intended');
    if (k.inTemp) {
      const temp = await readdir(join(parent, (await readdir(parent)).find((f) => f.startsWith('run.tmp-'))!));
      for (const f of k.inTemp.has) assert.ok(temp.includes(f), `${f} in the temp folder: ${temp.join(', ')}`);
      for (const f of k.inTemp.lacks) assert.ok(!temp.includes(f), `${f} not in the temp folder: ${temp.join(', ')}`);
    }
    await resumeAndFinish(gpu, parent, dir, run, k.want);
  });
}

for (const folder of [false, true]) {
  const when = folder ? 'once its temp folder appears' : 'as it starts';
  const child = started(undefined, { afterLine: 'saving 3', watchFolder: folder });
  test(`a run killed from outside ${when} a save resumes at a step that finished saving, or the one being saved`, async () => {
    const gpu = await testGpu();
    const { parent, dir } = child;
    const run = await child.run;
    assert.equal(run.signal, 'SIGKILL', `exit ${run.code}: ${run.stderr}`);
    const lastSaving = run.saving.at(-1)!;
    const lastSaved = Math.max(0, ...run.saved.keys());
    const step = await trainerStep(dir);
    // the save under way when the signal landed either completed (its folder swapped in) or left the previous one
    assert.ok(step === lastSaved || step === lastSaving, `resumed step ${step}; saved ${lastSaved}, saving ${lastSaving}`);
    console.log(`# killed ${when} save ${lastSaving}: left ${(await siblings(parent, run.pid)).join(', ')}; resumes at step ${step}`);
    await resumeAndFinish(gpu, parent, dir, run, step);
  });
}

const firstSave = started({ step: 1, at: 'write' });
test('a run killed during its first save has no checkpoint: a clear error, and a new save into the folder works', async () => {
  const gpu = await testGpu();
  const { parent, dir } = firstSave;
  const run = await firstSave.run;
  assert.equal(run.signal, 'SIGKILL', `exit ${run.code}: ${run.stderr}`);
  assert.deepEqual(await siblings(parent, run.pid), ['run.tmp-<pid>']);
  await assert.rejects(resumeTraining(gpu, dir, RUN.optimizer), (e: unknown) => {
    assert.ok(e instanceof CheckpointError, String(e));
    assert.equal(e.message, `checkpoint ${dir}: missing (no such folder, and no complete copy left by an interrupted write)`);
    return true;
  });
  const ref = await uninterrupted(gpu);
  await saveTraining(gpu, dir, ref.model, ref.opt);
  assert.deepEqual(await readdir(parent), ['run']);
  assert.equal(await trainerStep(dir), RUN.loop.steps);
});

test('resumeTraining: a damaged optimizer state or trainer.json, a config or optimizer state that does not fit, a model-only checkpoint: clear errors', async () => {
  const gpu = await testGpu();
  const ref = await uninterrupted(gpu);
  const { dir } = fresh();
  await saveTraining(gpu, dir, ref.model, ref.opt);
  const good = await readCheckpoint(dir);
  const base = gpu.memory().bytes;
  const rejects = async (message: RegExp | string, kind: new (message: string) => Error = CheckpointError) => {
    await assert.rejects(resumeTraining(gpu, dir, RUN.optimizer), (e: unknown) => {
      assert.ok(e instanceof kind, `expected a ${kind.name}, got ${String(e)}`);
      if (typeof message === 'string') assert.equal(e.message, message);
      else assert.match(e.message, message);
      return true;
    });
  };

  // a flipped byte: the checksum error names the folder and the file
  for (const name of ['optimizer.safetensors', 'trainer.json']) {
    const bytes = Uint8Array.from(good[name]!);
    bytes[bytes.length >> 1]! ^= 0x10;
    await writeFile(join(dir, name), bytes);
    await rejects(`checkpoint ${dir}: file '${name}': checksum mismatch (file changed or truncated)`);
    await writeFile(join(dir, name), good[name]!);
  }
  const ok = await resumeTraining(gpu, dir, RUN.optimizer);
  assert.equal(ok.opt.step, RUN.loop.steps, 'the repaired checkpoint loads');
  ok.opt.dispose();
  ok.model.dispose();

  // a config.json whose dim is not the tensors' (checksums valid): the first tensor that differs, both shapes
  const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as { hidden_size: number; engram: { dim: number } };
  cfg.hidden_size = cfg.engram.dim = 32;
  await writeCheckpoint(dir, { ...good, 'config.json': JSON.stringify(cfg) });
  await rejects(new RegExp(`^${escape(dir)}: tensor 'model\\.embed_tokens\\.weight' is \\[30, 16\\] F32; the config wants \\[30, 32\\] F32$`));
  assert.equal(gpu.memory().bytes, base, 'the model built for the bad config was freed');

  // optimizer state that does not fit the model (one moment of another shape, checksums valid)
  const { tensors } = decodeSafetensors(good['optimizer.safetensors']!, 'optimizer.safetensors');
  const m = tensors['model.embed_tokens.weight.m']!;
  const half: SafeTensor = { dtype: m.dtype, shape: [m.shape[0]!, m.shape[1]! / 2], data: m.data.slice(0, m.data.length / 2) };
  await writeCheckpoint(dir, { ...good, 'optimizer.safetensors': encodeSafetensors({ ...tensors, 'model.embed_tokens.weight.m': half }) });
  await rejects(/: AdamW\.restore: optimizer state 'model\.embed_tokens\.weight\.m' is 960 bytes; .*model\.embed_tokens\.weight.* needs 1920$/, EngramError);

  // a model-only checkpoint (no optimizer state, no step) is not a training checkpoint
  await saveModel(gpu, dir, ref.model);
  const before = gpu.memory().bytes;
  await rejects(`${dir}: not a training checkpoint (no optimizer.safetensors / trainer.json); load it with loadModel to fine-tune from scratch`, EngramError);
  assert.equal(gpu.memory().bytes, before, 'the loaded model was freed');
});

// a trainer.json whose step is not a non-negative integer (or is not JSON) is refused up front,
// not taken as it is (a string step would train 0 steps, null would start over with the restored
// moments); a failed AdamW.restore frees the model and the optimizer
test(
  'resumeTraining: a trainer.json without a valid step is an error naming the file; a failed restore frees the model',
  async () => {
    const gpu = await testGpu();
    const ref = await uninterrupted(gpu);
    const { dir } = fresh();
    await saveTraining(gpu, dir, ref.model, ref.opt);
    const good = await readCheckpoint(dir);
    const base = gpu.memory().bytes;
    for (const trainer of ['{"step":"x"}', '{"step":null}', '{"step":-3}', '{"step":2.5}', '{}', 'not json']) {
      await writeCheckpoint(dir, { ...good, 'trainer.json': trainer });
      await assert.rejects(resumeTraining(gpu, dir, RUN.optimizer), (e: unknown) => {
        assert.ok(e instanceof EngramError, `${trainer}: expected an EngramError, got ${String(e)}`);
        assert.ok(e.message.includes(dir) && e.message.includes('trainer.json'), `${trainer}: ${e.message}`);
        return true;
      });
      assert.equal(gpu.memory().bytes, base, `${trainer}: the model was freed`);
    }
    const { tensors } = decodeSafetensors(good['optimizer.safetensors']!, 'optimizer.safetensors');
    delete tensors['model.norm.weight.v'];
    await writeCheckpoint(dir, { ...good, 'optimizer.safetensors': encodeSafetensors(tensors) });
    await assert.rejects(resumeTraining(gpu, dir, RUN.optimizer), /optimizer state 'model\.norm\.weight\.v' is missing/);
    assert.equal(gpu.memory().bytes, base, 'the model and optimizer were freed');
  },
);
