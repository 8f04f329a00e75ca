// suite `multigpu`: the Memory+ layer with its value table on one GPU against the table sharded by
// columns over several (model/sharded_values.ts; exchanges through host memory).
//
//   npm run bench -- multigpu [--gpus=2] [--shared] [--quick] [--largest]
//
// the paper's layer (bench/suites/memory.ts: d = 1024, n = 1024 so 2^20 value rows, 4 heads, top-32,
// key dim 512, bf16 table, T = 8192 tokens), forward + backward + the optimizer's step, wall time
// with every device synchronised (several devices: no single GPU timer covers them); one GPU, sharded,
// and sharded with bf16 exchanges in turn, twice, each 5 steps after 3 of warm-up: the median of the 10
//   memory_layer_fwdbwd_tok_s_1gpu     the table on the first GPU
//   memory_layer_fwdbwd_tok_s_<G>gpu   sharded over G GPUs (openGpus: one per GPU of the host)
//   exchange_ms                        per step, the host's time copying data between devices (into uploads)
//   exchange_MB                        per step, the bytes read back and uploaded
//   waiting_ms                         per step, the rest of the sharded reads' wall time: awaiting the
//                                      devices' work (the model's GPU's, the shards') and the read backs
//   host_read_GBps, host_write_GBps    one 32 MiB read back and upload on the model's GPU, through its
//   host_exchange_GBps                 kept staging buffers, and one read back there uploaded to the
//                                      second device from the mapped range; median of 5 after a warm-up
//   largest_table_rows_1gpu            with --largest: the most value rows (n^2; n grows by sqrt 2 from 1024
//   largest_table_rows_<G>gpu          until a step fails, then 4 bisections) for which the layer takes a
//                                      training step with its table on one GPU, and sharded
//   train_tok_s_1gpu, train_tok_s_<G>gpu  a whole model's training step (Trainer): 8 blocks of 1,024, Memory+
//                                      in blocks 2 and 5 over one table of the layer's size, 4 x 1,024 tokens
//                                      a step; in the same turns, median of 10 steps after 2 of warm-up
//   train_loss_max_abs_diff            a small Memory+ model (2 blocks of 256, 4,096 bf16 value rows) trained
//                                      20 steps on one GPU and with its table sharded from the same seed:
//                                      the largest difference of the two runs' step losses (notes: both runs)
//   ..._bf16x                          the sharded metrics (the layer's and the training check's) with the
//                                      column blocks exchanged as bf16 (ShardedValueTable's exchange)
// --shared: the G devices share the first GPU (openGpus shared): what the exchanges cost, no speed-up;
// the metrics are then named _<G>dev_shared. --quick: small sizes (a smoke run on lavapipe).
// on a GPU host without Mesa, openGpus needs Mesa's device-select layer: scripts/device_select_layer.sh
// pack (here), carry .gpu-layer, then there `scripts/device_select_layer.sh install` and its LD_LIBRARY_PATH;
// scripts/multigpu_probe.ts checks that each Gpu's memory lands on its own GPU.

import type { Gpu } from '../../src/gpu/device.ts';
import { openGpus } from '../../src/gpu/multi.ts';
import type { Tensor } from '../../src/gpu/tensor.ts';
import { fillNormal } from '../../src/kernels/init/init.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { MemoryLayer, type MemoryLayerConfig } from '../../src/model/memory_layer.ts';
import { ShardedValueTable, type ExchangeDType } from '../../src/model/sharded_values.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { ValueTable } from '../../src/model/value_table.ts';
import { randomBatch } from '../../src/testing/batch.ts';
import { AdamW } from '../../src/train/optimizer.ts';
import { ShardedAdamW } from '../../src/train/sharded_optimizer.ts';
import { optimizerFor, Trainer } from '../../src/train/trainer.ts';
import { median, nvidiaSmi } from '../lib.ts';
import type { SuiteOutput } from '../run.ts';
import { PAPER, QUICK, type Sizes } from './memory.ts';


/** seconds of one training step of the layer (forward, backward, optimizer), every device synchronised */
async function step(gpus: readonly Gpu[], layer: MemoryLayer, x: Tensor, dout: Tensor, update: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  const y = await layer.forward(x);
  const dx = await layer.backward(dout);
  await update();
  await Promise.all(gpus.map((g) => g.sync()));
  y.dispose();
  dx.dispose();
  return (performance.now() - t0) / 1000;
}

/** the layer over one table or the sharded one: its step times (reps after `warm` steps) and the exchange's per step */
async function layerRun(gpu: Gpu, gpus: readonly Gpu[] | null, s: Sizes, reps: number, warm = 1, exchange: ExchangeDType = 'f32'): Promise<{ times: number[]; exchange: number; waiting: number; bytes: number }> {
  const cfg: MemoryLayerConfig = { d: s.d, heads: s.heads, nKeys: s.n, topk: s.k, keyDim: s.dk };
  const o = { rows: s.n * s.n, dim: s.d, dtype: 'bf16' as const, seed: 1 };
  // everything made is freed however the run ends (--largest runs until one runs out of memory)
  const made: { dispose(): void }[] = [];
  const keep = <T extends { dispose(): void }>(x: T): T => (made.push(x), x);
  try {
    const sharded = gpus ? keep(await ShardedValueTable.create(gpus, o, exchange)) : null;
    const table = sharded ? null : keep(await ValueTable.create(gpu, o));
    const layer = keep(await MemoryLayer.create(gpu, 'mem', cfg, (sharded ?? table)!, 2));
    const opt = keep(sharded ? await ShardedAdamW.create(gpu, layer.params, sharded, { lr: 1e-4 }) : await AdamW.create(gpu, [...layer.params, ...table!.params], { lr: 1e-4 }));
    const x = keep(await gpu.tensor([s.T, s.d], 'f32', 'x'));
    const dout = keep(await gpu.tensor([s.T, s.d], 'f32', 'dout'));
    await fillNormal(gpu, x, { std: 1, seed: 3 });
    await fillNormal(gpu, dout, { std: 1e-3, seed: 4 });
    const all = gpus ?? [gpu];
    for (let r = 0; r < warm; r++) await step(all, layer, x, dout, () => opt.update());
    const before = sharded ? { ...sharded.time } : null;
    const times: number[] = [];
    for (let r = 0; r < reps; r++) times.push(await step(all, layer, x, dout, () => opt.update()));
    const per = (k: 'exchange' | 'waiting' | 'bytes') => (sharded && before ? (sharded.time[k] - before[k]) / reps : 0);
    return { times, exchange: per('exchange'), waiting: per('waiting'), bytes: per('bytes') };
  } finally {
    for (const x of made.reverse()) x.dispose();
  }
}

/**
 * a whole model's training step (Trainer: forward, backward, AdamW over every block) with the value
 * table on one GPU or sharded: tokens a second over `reps` steps after 2 of warm-up. the model: 8
 * blocks of the layer's width, Memory+ in blocks 2 and 5 over one table of the layer's size, a batch
 * of 4 x 1,024 tokens (quick: 2 blocks, one memory layer, 2 x 32)
 */
async function modelRun(gpu: Gpu, gpus: readonly Gpu[] | null, s: Sizes, quick: boolean, reps: number, exchange: ExchangeDType = 'f32'): Promise<number[]> {
  const [B, T] = quick ? [2, 32] : [4, 1024];
  const config = parseModelConfig({
    vocabSize: 8192,
    dim: s.d,
    layers: quick ? 2 : 8,
    heads: quick ? 4 : 8,
    kvHeads: quick ? 2 : 4,
    ffnHidden: quick ? 128 : 2816,
    maxSeqLen: T,
    memory: { layers: quick ? [1] : [2, 5], nKeys: s.n, heads: s.heads, topk: s.k, keyDim: s.dk, valueDtype: 'bf16' },
  });
  const batch = await randomBatch(gpu, B, T, 8192, 5);
  const model = await Transformer.create(gpu, config, 1, gpus ? { valueGpus: gpus, valueExchange: exchange } : {});
  const opt = await optimizerFor(gpu, model, { lr: 1e-4 });
  const trainer = new Trainer(gpu, model, opt, { warmup: 1, steps: 1000, minRatio: 0.1 });
  const rates: number[] = [];
  try {
    for (let r = 0; r < 2 + reps; r++) {
      const t0 = performance.now();
      await trainer.step([batch]);
      await Promise.all((gpus ?? [gpu]).map((g) => g.sync()));
      if (r >= 2) rates.push((B * T) / ((performance.now() - t0) / 1000));
    }
  } finally {
    opt.dispose();
    model.dispose();
    batch.dispose();
  }
  return rates;
}

/**
 * GB/s of 32 MiB moved by the host (median of 5): a read back and an upload on `gpu` (through its
 * kept staging buffers), and a read back on `gpu` uploaded to `to` straight from the mapped range (an exchange)
 */
async function hostTransfer(gpu: Gpu, to: Gpu): Promise<{ host_read_GBps: number; host_write_GBps: number; host_exchange_GBps: number }> {
  const bytes = 32 * 2 ** 20;
  const t = await gpu.tensor([bytes / 4], 'f32', 'transfer');
  const u = await to.tensor([bytes / 4], 'f32', 'transfer');
  const host = new Uint8Array(bytes);
  const [reads, writes, exchanges]: [number[], number[], number[]] = [[], [], []];
  const timed = async (into: number[], f: () => Promise<unknown>) => {
    const t0 = performance.now();
    await f();
    into.push(performance.now() - t0);
  };
  try {
    await gpu.sync();
    for (let i = 0; i < 6; i++) {
      await timed(reads, () => gpu.readBytes(t.buffer, t.offset, bytes));
      await timed(writes, async () => {
        gpu.writeBytes(t, host);
        await gpu.sync();
      });
      await timed(exchanges, async () => {
        await gpu.readView(t.buffer, t.offset, bytes, (b) => to.writeBytes(u, b));
        await to.sync();
      });
    }
  } finally {
    t.dispose();
    u.dispose();
  }
  // the first of each is a warm-up (the staging buffers are made then)
  const rate = (ms: number[]) => bytes / 1e6 / median(ms.slice(1));
  return { host_read_GBps: rate(reads), host_write_GBps: rate(writes), host_exchange_GBps: rate(exchanges) };
}

/** 20 steps of a small Memory+ model on one GPU and sharded over `gpus` (the first the model's): the runs' losses */
async function parity(gpu: Gpu, gpus: readonly Gpu[], notes: Record<string, string>, exchange: ExchangeDType = 'f32'): Promise<number> {
  const config = parseModelConfig({
    vocabSize: 512,
    dim: 256,
    layers: 2,
    heads: 4,
    ffnHidden: 512,
    maxSeqLen: 64,
    memory: { layers: [1], nKeys: 64, heads: 4, topk: 8, keyDim: 64, valueDtype: 'bf16' },
  });
  const batch = await randomBatch(gpu, 4, 64, 512, 7);
  const schedule = { warmup: 4, steps: 20, minRatio: 0.1 };
  const losses: number[][] = [];
  try {
    for (const sharded of [false, true]) {
      const model = await Transformer.create(gpu, config, 3, sharded ? { valueGpus: gpus, valueExchange: exchange } : {});
      const opt = await optimizerFor(gpu, model, { lr: 3e-3 });
      const trainer = new Trainer(gpu, model, opt, schedule);
      const run: number[] = [];
      for (let s = 0; s < 20; s++) run.push((await trainer.step([batch])).loss);
      losses.push(run);
      opt.dispose();
      model.dispose();
    }
  } finally {
    batch.dispose();
  }
  const [one, many] = losses as [number[], number[]];
  notes[exchange === 'f32' ? 'train_losses' : `train_losses_${exchange}x`] = `one GPU ${one.map((l) => l.toFixed(4)).join(' ')}; sharded ${many.map((l) => l.toFixed(4)).join(' ')}`;
  return Math.max(...one.map((l, i) => Math.abs(l - many[i]!)));
}

/** each GPU's memory in use by nvidia-smi ('-' without one) */
function usedMiB(): string {
  return nvidiaSmi(['memory.used'])?.join(' / ') ?? '-';
}

/**
 * the most value rows (n^2) for which the layer takes a training step (T at most 1,024), its table
 * on `main` (gpus null) or sharded over `gpus`:
 * n grows by sqrt 2 from the suite's until a step fails, then 4 bisections between the last n that
 * ran and the first that failed (within 1/16 of their gap)
 */
async function largest(main: Gpu, gpus: readonly Gpu[] | null, s: Sizes, notes: Record<string, string>, tag: string): Promise<number> {
  const tries: string[] = [];
  const runs = async (n: number): Promise<boolean> => {
    // every try starts with the last one's memory freed (Dawn frees it only after a later submit
    // completes: a two-GPU run held the previous tries' tables and found a smaller largest table,
    // bench/results/multigpu-nvidia-h200-20261124/leftover.txt); nvidia-smi's count before it in the notes
    for (const g of gpus ?? [main]) await g.reclaim();
    const before = usedMiB();
    try {
      await layerRun(main, gpus, { ...s, n, T: Math.min(s.T, 1024) }, 1);
      tries.push(`${n}: ran (MiB in use before: ${before})`);
      console.error(`[multigpu] ${tag}: n = ${n} (${n * n} rows): a training step ran (MiB in use before: ${before})`);
      return true;
    } catch (e) {
      tries.push(`${n}: ${String(e).split('\n')[0]} (MiB in use before: ${before})`);
      console.error(`[multigpu] ${tag}: n = ${n} (${n * n} rows) failed: ${String(e).split('\n')[0]} (MiB in use before: ${before})`);
      for (const g of gpus ?? [main]) g.scratch.trim();
      return false;
    }
  };
  let ok = 0;
  let bad = s.n;
  while (await runs(bad)) {
    ok = bad;
    bad = Math.round(bad * Math.SQRT2);
  }
  for (let i = 0; i < 4 && bad - ok > 1; i++) {
    const mid = Math.round((ok + bad) / 2);
    if (await runs(mid)) ok = mid;
    else bad = mid;
  }
  notes[`largest_${tag}`] = `n tried (rows n^2): ${tries.join('; ')}`;
  return ok * ok;
}

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const shared = args.includes('--shared');
  const G = Number(args.find((a) => a.startsWith('--gpus='))?.slice(7) ?? 2);
  if (!(Number.isInteger(G) && G >= 2)) throw new Error(`multigpu: --gpus=${G} must be an integer >= 2`);
  const s = quick ? QUICK : PAPER;
  const reps = quick ? 2 : 5;
  // the devices: one per GPU of the host (the first the model's and shard 0's), or with --shared the
  // suite's own and G - 1 more on its adapter
  const opened = shared ? await openGpus({ count: G - 1, shared: true }) : await openGpus({ count: G });
  const gpus = shared ? [gpu, ...opened] : opened;
  const main = gpus[0]!;
  const tag = shared ? `${G}dev_shared` : `${G}gpu`;
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  try {
    // one GPU and sharded in turn, twice: a GPU whose clocks or neighbours change during the run
    // shows in both, not in one
    // and the sharded table with bf16 exchanges (_bf16x), in the same turns
    const ones: Awaited<ReturnType<typeof layerRun>>[] = [];
    const manys: typeof ones = [];
    const halves: typeof ones = [];
    for (let round = 0; round < 2; round++) {
      ones.push(await layerRun(main, null, s, reps, 3));
      manys.push(await layerRun(main, gpus, s, reps, 3));
      halves.push(await layerRun(main, gpus, s, reps, 3, 'bf16'));
    }
    const one = { seconds: median(ones.flatMap((r) => r.times)) };
    const summary = (runs: typeof ones) => {
      const mean = (k: 'exchange' | 'waiting' | 'bytes') => (runs[0]![k] + runs[1]![k]) / 2;
      return { seconds: median(runs.flatMap((r) => r.times)), exchange: mean('exchange'), waiting: mean('waiting'), bytes: mean('bytes') };
    };
    const many = summary(manys);
    const half = summary(halves);
    results['memory_layer_fwdbwd_tok_s_1gpu'] = s.T / one.seconds;
    for (const [suffix, r] of [['', many], ['_bf16x', half]] as const) {
      results[`memory_layer_fwdbwd_tok_s_${tag}${suffix}`] = s.T / r.seconds;
      results[`exchange_ms${suffix}`] = r.exchange * 1e3;
      results[`exchange_MB${suffix}`] = r.bytes / 1e6;
      results[`waiting_ms${suffix}`] = r.waiting * 1e3;
    }
    const ms = (r: { times: number[] }) => r.times.map((t) => (t * 1e3).toFixed(1)).join(' ');
    notes['step_times_ms'] = `1 GPU ${ones.map(ms).join(' | ')}; ${tag} ${manys.map(ms).join(' | ')}; ${tag} bf16 exchange ${halves.map(ms).join(' | ')}`;
    Object.assign(results, await hostTransfer(main, gpus[1]!));
    notes['sizes'] = `T=${s.T} d=${s.d} n=${s.n} (${s.n * s.n} rows) heads=${s.heads} k=${s.k} dk=${s.dk}, bf16 table, AdamW (f32 moments and master copy); a step: forward, backward, optimizer; one GPU, sharded and sharded with bf16 exchanges in turn, twice, each ${reps} steps after 3 warm-up steps: the median of the ${2 * reps}`;
    const line = (r: typeof many) => `${(r.seconds * 1e3).toFixed(1)} (in the sharded reads: exchange ${(r.exchange * 1e3).toFixed(1)}, waiting ${(r.waiting * 1e3).toFixed(1)})`;
    notes['step_ms'] = `1 GPU ${(one.seconds * 1e3).toFixed(1)}; ${tag} ${line(many)}; ${tag} bf16 exchange ${line(half)}`;
    // a whole model's training steps, in the same turns
    const trains: Record<string, number[]> = { '1gpu': [], [tag]: [], [`${tag}_bf16x`]: [] };
    for (let round = 0; round < 2; round++) {
      trains['1gpu']!.push(...(await modelRun(main, null, s, quick, reps)));
      trains[tag]!.push(...(await modelRun(main, gpus, s, quick, reps)));
      trains[`${tag}_bf16x`]!.push(...(await modelRun(main, gpus, s, quick, reps, 'bf16')));
    }
    for (const [k, v] of Object.entries(trains)) results[`train_tok_s_${k}`] = median(v);
    results['train_loss_max_abs_diff'] = await parity(main, gpus, notes);
    results['train_loss_max_abs_diff_bf16x'] = await parity(main, gpus, notes, 'bf16');
    notes['devices'] = gpus.map((g, i) => `${i}: ${g.adapterName}`).join('; ') + (shared ? ' (shared: every device on the first GPU)' : '');
    if (args.includes('--largest')) {
      results['largest_table_rows_1gpu'] = await largest(main, null, s, notes, '1gpu');
      results[`largest_table_rows_${tag}`] = await largest(main, gpus, s, notes, tag);
    }
  } finally {
    for (const g of opened) g.destroy();
  }
  return { results, notes };
}
