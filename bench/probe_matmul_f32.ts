// probe of the tiled f32 matmul at 4096^3 on the adapter at hand (tuning on the device).
//
//   node --import tsx bench/probe_matmul_f32.ts      PROBE_SIZE=4096  PROBE_ROUNDS=3  PROBE_SECONDS=2
//
// after PROBE_SECONDS of back-to-back products (clocks up), every line of CANDIDATES is timed
// in PROBE_ROUNDS round-robin rounds (the H100's clocks drift during a run and would favour
// the first lines otherwise): GPU-timed regions of 10 products, median of 3 per round. each
// line is first checked on a 384x320x200 product against the float64 reference. a table of
// the median over rounds closes the run, with nvidia-smi's clocks before and after, and the
// medians go to bench/results/matmul_f32_probe[_norobust]-<device>-<date>.json.

import { execFileSync } from 'node:child_process';
import { Gpu } from '../src/gpu/device.ts';
import { MATMUL_CONFIGS, configFits, configName, matmul, matmulFlops, type MatmulConfig } from '../src/kernels/matmul/matmul.ts';
import { matmul as matmulRef } from '../src/reference/matmul.ts';
import { Rng } from '../src/testing/rng.ts';
import { deviceName, median, timePasses, warmUp, writeResults } from './lib.ts';

const N = Number(process.env['PROBE_SIZE'] ?? 4096);
const ROUNDS = Number(process.env['PROBE_ROUNDS'] ?? 3);
const SECONDS = Number(process.env['PROBE_SECONDS'] ?? 2);

interface Candidate {
  config: MatmulConfig;
  transA: boolean;
  transB: boolean;
  /** matmul's pretranspose option (default: its own choice) */
  pre?: boolean;
}

// U < BK keeps a k loop in the inner product (run-time slot indices: clamped under robustness)
const extra: MatmulConfig[] = [
  { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8, U: 8, G: 8 },
  { BM: 64, BN: 256, BK: 16, TM: 8, TN: 8, U: 16, G: 8 },
  { BM: 128, BN: 64, BK: 16, TM: 8, TN: 8, U: 16, G: 8 },
];

const first = MATMUL_CONFIGS[0]!;
const CANDIDATES: Candidate[] = [
  ...[...MATMUL_CONFIGS.slice(0, 2), ...extra].map((config) => ({ config, transA: false, transB: false })),
  { config: first, transA: false, transB: true },
  { config: first, transA: true, transB: false },
  { config: first, transA: true, transB: true },
  // the kernel itself on operands stored along k
  { config: first, transA: false, transB: false, pre: false },
  { config: first, transA: false, transB: true, pre: false },
  { config: first, transA: true, transB: true, pre: false },
];

const nameOf = (c: Candidate) => `${configName(c.config)} ${c.transA ? 't' : 'n'}${c.transB ? 't' : 'n'}${c.pre === false ? ' (no pretranspose)' : ''}`;

function smi(): string {
  try {
    return execFileSync('nvidia-smi', ['--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active', '--format=csv,noheader'], {
      encoding: 'utf8',
    }).trim();
  } catch {
    return '(no nvidia-smi)';
  }
}

async function check(gpu: Gpu, c: Candidate): Promise<number> {
  const [M, Nn, K] = [384, 320, 200];
  const rng = new Rng(7);
  const a = rng.normals(M * K);
  const b = rng.normals(K * Nn);
  // stored layouts: a (K,M) when transA, b (N,K) when transB
  const ta = await gpu.tensorFrom(a, c.transA ? [K, M] : [M, K], 'f32', 'a');
  const tb = await gpu.tensorFrom(b, c.transB ? [Nn, K] : [K, Nn], 'f32', 'b');
  const out = await gpu.tensor([M, Nn], 'f32', 'out');
  await matmul(gpu, { out }, { a: ta, b: tb }, { config: c.config, transA: c.transA, transB: c.transB, ...(c.pre !== undefined ? { pretranspose: c.pre } : {}) });
  const got = (await gpu.read(out)) as Float32Array;
  const want = matmulRef(a, b, { M, N: Nn, K }, { transA: c.transA, transB: c.transB });
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i]! - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  for (const t of [ta, tb, out]) t.dispose();
  return Math.sqrt(num / den);
}

async function main(): Promise<void> {
  const gpu = await Gpu.create();
  console.log(`adapter: ${gpu.adapterName}`);
  const rng = new Rng(1);
  const a = await gpu.tensorFrom(rng.normals(N * N), [N, N], 'f32', 'a');
  const b = await gpu.tensorFrom(rng.normals(N * N), [N, N], 'f32', 'b');
  const c = await gpu.tensor([N, N], 'f32', 'c');
  const live: Candidate[] = [];
  for (const cand of CANDIDATES) {
    if (!configFits(gpu, cand.config)) {
      console.log(`${nameOf(cand)}: does not fit`);
      continue;
    }
    try {
      const err = await check(gpu, cand);
      console.log(`${nameOf(cand)}: rel err ${err.toExponential(2)}`);
      if (err < 1e-5) live.push(cand);
    } catch (e) {
      console.log(`${nameOf(cand)}: failed ${(e as Error).message.split('\n')[0]}`);
    }
  }
  const run = (cand: Candidate) => matmul(gpu, { out: c }, { a, b }, { config: cand.config, transA: cand.transA, transB: cand.transB, ...(cand.pre !== undefined ? { pretranspose: cand.pre } : {}) });
  console.log(`before warm-up: ${smi()}`);
  await warmUp(gpu, () => run(live[0]!), SECONDS);
  console.log(`after warm-up:  ${smi()}`);
  const flops = matmulFlops(N, N, N);
  const tf = new Map<Candidate, number[]>(live.map((x) => [x, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (const cand of live) {
      const ms = median(await timePasses(gpu, () => run(cand), { reps: 3, inner: 10 }));
      tf.get(cand)!.push(flops / ms / 1e9);
    }
    console.log(`round ${r}: ${smi()}`);
  }
  const rows = live.map((x) => {
    const v = tf.get(x)!;
    return `${nameOf(x).padEnd(26)} median ${median(v).toFixed(1).padStart(5)}  rounds ${v.map((t) => t.toFixed(1)).join(' ')}`;
  });
  console.log(`\n== f32 matmul ${N}^3 TFLOP/s ==\n${rows.join('\n')}`);
  // the result file: median TFLOP/s per candidate; a run with Dawn toggles gets its own suite name
  const toggles = process.env['ENGRAM_DAWN_TOGGLES'] ?? '';
  const metric = (x: Candidate) => `${configName(x.config)}_${x.transA ? 't' : 'n'}${x.transB ? 't' : 'n'}${x.pre === false ? '_nopre' : ''}_TFLOPs`;
  const results = Object.fromEntries(live.map((x) => [metric(x), median(tf.get(x)!)]));
  const suite = `matmul_f32_probe${/disable_robustness/.test(toggles) ? '_norobust' : ''}`;
  const env = [toggles && `ENGRAM_DAWN_TOGGLES=${toggles}`, N !== 4096 && `PROBE_SIZE=${N}`].filter(Boolean).join(' ');
  const path = writeResults(suite, deviceName(gpu), results, { size: `${N}^3`, ...(toggles ? { dawn_toggles: toggles } : {}) }, `${env ? `${env} ` : ''}node --import tsx bench/probe_matmul_f32.ts`);
  console.log(`wrote ${path}`);
  for (const t of [a, b, c]) t.dispose();
  gpu.destroy();
}

await main();
