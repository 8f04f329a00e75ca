// probe of the subgroup-matrix (tensor core) path on the adapter at hand, for tuning on the device.
//
//   node --import tsx bench/probe_subgroup_matrix.ts            (everything, under a minute on an H100)
//   PROBE_ONLY=syntax|kernels  PROBE_SIZE=4096  PROBE_REPS=12  PROBE_ROUNDS=3    (optional)
//
// 1. the adapter: name, subgroup sizes, workgroup memory, the subgroup-matrix configurations.
// 2. wgsl facts: compiles small shaders (current vs deprecated builtin forms, workgroup and
//    non-f16 source arrays, subgroup_id, uniformity) and prints what the compiler says; two of
//    them also run, to learn whether offset/stride count array elements or matrix components.
// 3. every line of CANDIDATES: compile, check a 512^3 product against a float64 cpu reference
//    (relative error); then, after a clock warm-up, time SIZE^3 in ROUNDS round-robin rounds
//    (REPS GPU-timed passes of 3 products in all per config; round-robin because the H100's
//    clocks drift during a run and would otherwise favour the first lines) and print TFLOP/s
//    of the median pass and of the best round. a failing line (compile error, wrong result,
//    device loss) is printed and the rest go on. a table of all lines closes the run.

import { Gpu } from '../src/gpu/device.ts';
import { roundTo } from '../src/gpu/dtype.ts';
import { DeviceLostError } from '../src/gpu/errors.ts';
import type { Tensor } from '../src/gpu/tensor.ts';
import { median, timePasses } from './lib.ts';
import {
  fmtTile,
  matmulSubgroup,
  subgroupMatmulUnsupported,
  subgroupMatrixShape,
  type SubgroupTile,
} from '../src/kernels/matmul/matmul_subgroup.ts';
import { Rng } from '../src/testing/rng.ts';

interface Candidate {
  tile: SubgroupTile;
  out?: 'f32' | 'f16';
  transA?: boolean;
  transB?: boolean;
  /** add a zero bias (forces the scratch epilogue) */
  bias?: boolean;
}

const t = (BM: number, BN: number, BK: number, WM: number, WN: number, stages: 1 | 2, more: Partial<SubgroupTile> = {}): SubgroupTile => ({
  BM,
  BN,
  BK,
  WM,
  WN,
  stages,
  pad: 8,
  ...more,
});

// one line per candidate: the tuning list (the first line is repeated last, to show drift).
// the order follows an H100 run of this probe, which printed its table but wrote no result file;
// the kernels suite's file has the shipped tiles' numbers.
const CANDIDATES: Candidate[] = [
  { tile: t(128, 128, 64, 4, 2, 1) },
  { tile: t(128, 256, 32, 2, 4, 1) },
  { tile: t(128, 256, 32, 4, 4, 1) },
  { tile: t(256, 128, 32, 4, 2, 1) },
  { tile: t(128, 128, 32, 2, 4, 2) },
  { tile: t(64, 128, 64, 2, 2, 1) },
  { tile: t(64, 64, 32, 2, 2, 2) },
  { tile: t(128, 128, 64, 4, 2, 1), out: 'f16' },
  { tile: t(128, 128, 64, 4, 2, 1, { epilogue: 'reuse' }), out: 'f16' },
  { tile: t(128, 128, 64, 4, 2, 1, { epilogue: 'buffer' }), out: 'f16' },
  { tile: t(128, 128, 64, 4, 2, 1), bias: true },
  { tile: t(128, 128, 64, 4, 2, 1, { epilogue: 'buffer' }), bias: true },
  { tile: t(128, 128, 64, 4, 2, 1), out: 'f16', bias: true },
  { tile: t(128, 128, 64, 4, 2, 1), transA: true },
  { tile: t(128, 128, 64, 4, 2, 1), transB: true },
  { tile: t(128, 128, 64, 4, 2, 1), transB: true, out: 'f16' },
  { tile: t(128, 128, 64, 4, 2, 1), transA: true, transB: true },
  { tile: t(128, 256, 32, 2, 4, 1), transA: true },
  { tile: t(128, 256, 32, 2, 4, 1), out: 'f16' },
  { tile: t(128, 128, 64, 4, 2, 1) },
];

const SIZE = Number(process.env['PROBE_SIZE'] ?? 4096);
const REPS = Number(process.env['PROBE_REPS'] ?? 12);
const ROUNDS = Number(process.env['PROBE_ROUNDS'] ?? 3);
const ONLY = process.env['PROBE_ONLY'] ?? '';
const CHECK = 512;
const PER_PASS = 3;

const log = (s: string) => console.log(s);

// ---------------------------------------------------------------- wgsl facts

interface Snippet {
  name: string;
  code: string;
  /** run it: src holds A (16x16, row-major) then B (16x16, row-major) as f16; dst gets C */
  run?: boolean;
  workgroup?: number;
}

const HEAD = 'enable f16;\nenable subgroups;\nenable chromium_experimental_subgroup_matrix;\n';
const L = 'subgroup_matrix_left<f16, 16, 16>';
const R = 'subgroup_matrix_right<f16, 16, 16>';
const C = 'subgroup_matrix_result<f32, 16, 16>';
const IO = (src: string) =>
  `@group(0) @binding(0) var<storage, read> src: ${src};\n@group(0) @binding(1) var<storage, read_write> dst: array<f32>;\n`;

const SNIPPETS: Snippet[] = [
  {
    name: 'template majorness, f16 storage source',
    code: `${HEAD}${IO('array<f16>')}@compute @workgroup_size(32) fn main() {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
    run: true,
  },
  {
    name: 'bool col_major argument (older form)',
    code: `${HEAD}${IO('array<f16>')}@compute @workgroup_size(32) fn main() {
  let l = subgroupMatrixLoad<${L}>(&src, 0u, false, 16u);
  let r = subgroupMatrixLoad<${R}>(&src, 256u, false, 16u);
  subgroupMatrixStore(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), false, 16u);
}`,
  },
  {
    name: 'col_major right from a transposed copy in workgroup f16 memory',
    code: `${HEAD}${IO('array<f16>')}var<workgroup> w: array<f16, 512>;
@compute @workgroup_size(32) fn main(@builtin(local_invocation_index) i: u32) {
  for (var e = i; e < 256u; e += 32u) { w[e] = src[e]; w[256u + (e % 16u) * 16u + e / 16u] = src[256u + e]; }
  workgroupBarrier();
  let l = subgroupMatrixLoad<${L}, row_major>(&w, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, col_major>(&w, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
    run: true,
  },
  {
    name: 'f16 matrices from array<u32> storage, offset/stride in u32 units',
    code: `${HEAD}${IO('array<u32>')}@compute @workgroup_size(32) fn main() {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 8u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 128u, 8u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
    run: true,
  },
  {
    name: 'f16 matrices from array<u32> storage, offset/stride in f16 units',
    code: `${HEAD}${IO('array<u32>')}@compute @workgroup_size(32) fn main() {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
    run: true,
  },
  {
    name: 'f16 matrices from workgroup array<vec4<u32>>, offset/stride in vec4 units',
    code: `${HEAD}${IO('array<vec4<u32>>')}var<workgroup> w: array<vec4<u32>, 64>;
@compute @workgroup_size(32) fn main(@builtin(local_invocation_index) i: u32) {
  w[i] = src[i]; w[i + 32u] = src[i + 32u];
  workgroupBarrier();
  let l = subgroupMatrixLoad<${L}, row_major>(&w, 0u, 2u);
  let r = subgroupMatrixLoad<${R}, row_major>(&w, 32u, 2u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
    run: true,
  },
  {
    name: 'offsets from @builtin(subgroup_id), 2 subgroups',
    code: `${HEAD}${IO('array<f16>')}@compute @workgroup_size(64) fn main(@builtin(subgroup_id) s: u32) {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, s * 256u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
  },
  {
    name: 'offsets from local_invocation_index / 32 (expect a uniformity error)',
    code: `${HEAD}${IO('array<f16>')}@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) i: u32) {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, (i / 32u) * 256u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
  },
  {
    name: 'same with diagnostic(off, chromium.subgroup_matrix_uniformity)',
    code: `diagnostic(off, chromium.subgroup_matrix_uniformity);\n${HEAD}${IO('array<f16>')}@compute @workgroup_size(64) fn main(@builtin(local_invocation_index) i: u32) {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, (i / 32u) * 256u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
  },
  {
    name: 'workgroup_size 16 (expect: x must be a multiple of the max subgroup size)',
    code: `${HEAD}${IO('array<f16>')}@compute @workgroup_size(16) fn main() {
  let l = subgroupMatrixLoad<${L}, row_major>(&src, 0u, 16u);
  let r = subgroupMatrixLoad<${R}, row_major>(&src, 256u, 16u);
  subgroupMatrixStore<row_major>(&dst, 0u, subgroupMatrixMultiplyAccumulate(l, r, ${C}()), 16u);
}`,
  },
];

async function syntaxFacts(gpu: Gpu): Promise<void> {
  log('\n== wgsl facts ==');
  const dev = gpu.device;
  const rng = new Rng(7);
  const ab = roundTo(rng.normals(512), 'f16');
  const want = new Float64Array(256);
  for (let r = 0; r < 16; r++) {
    for (let c = 0; c < 16; c++) {
      let s = 0;
      for (let k = 0; k < 16; k++) s += ab[r * 16 + k]! * ab[256 + k * 16 + c]!;
      want[r * 16 + c] = s;
    }
  }
  const src = await gpu.tensorFrom(ab, [512], 'f16', 'probe_src');
  const dst = await gpu.tensor([512], 'f32', 'probe_dst');
  for (const s of SNIPPETS) {
    let line = `- ${s.name}: `;
    try {
      dev.pushErrorScope('validation');
      const module = dev.createShaderModule({ label: s.name, code: s.code });
      const info = await module.getCompilationInfo();
      const compileErr = await dev.popErrorScope();
      const msgs = info.messages.map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message.split('\n')[0]}`);
      if (info.messages.some((m) => m.type === 'error') || compileErr) {
        log(line + `COMPILE ERROR: ${msgs.join(' | ') || compileErr?.message.split('\n').slice(0, 3).join(' ')}`);
        continue;
      }
      dev.pushErrorScope('validation');
      let pipeline: GPUComputePipeline;
      try {
        pipeline = await dev.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      } catch (e) {
        await dev.popErrorScope();
        log(line + `PIPELINE ERROR: ${(e as Error).message.split('\n').slice(0, 2).join(' ')}${msgs.length ? ` [${msgs.join(' | ')}]` : ''}`);
        continue;
      }
      const pipeErr = await dev.popErrorScope();
      if (pipeErr) {
        log(line + `PIPELINE ERROR: ${pipeErr.message.split('\n').slice(0, 2).join(' ')}`);
        continue;
      }
      line += `compiles${msgs.length ? ` [${msgs.join(' | ')}]` : ''}`;
      if (s.run) {
        gpu.write(dst, new Float32Array(512));
        const enc = dev.createCommandEncoder();
        const pass = enc.beginComputePass();
        pass.setPipeline(pipeline);
        pass.setBindGroup(
          0,
          dev.createBindGroup({
            layout: pipeline.getBindGroupLayout(0),
            entries: [
              { binding: 0, resource: src.binding() },
              { binding: 1, resource: dst.binding() },
            ],
          }),
        );
        pass.dispatchWorkgroups(s.workgroup ?? 1);
        pass.end();
        dev.queue.submit([enc.finish()]);
        const got = (await gpu.read(dst)).subarray(0, 256);
        line += `; runs: rel err vs A*B ${relErr(got, want).toExponential(2)}`;
      }
      log(line);
    } catch (e) {
      log(line + `FAILED: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  src.dispose();
  dst.dispose();
}

// ---------------------------------------------------------------- kernels

function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i]! - want[i]!;
    num += Number.isNaN(d) ? Infinity : d * d;
    den += want[i]! * want[i]!;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

/** row-major (r x c) -> row-major (c x r) */
function transpose(x: ArrayLike<number>, r: number, c: number): Float64Array {
  const y = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) y[j * r + i] = x[i * c + j]!;
  return y;
}

function refMatmul(a: Float64Array, b: Float64Array, M: number, N: number, K: number): Float64Array {
  const out = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    const row = out.subarray(i * N, (i + 1) * N);
    for (let k = 0; k < K; k++) {
      const av = a[i * K + k]!;
      const bk = k * N;
      for (let j = 0; j < N; j++) row[j]! += av * b[bk + j]!;
    }
  }
  return out;
}

interface Row {
  label: string;
  err: string;
  /** over all timed passes: median ms and its TFLOP/s; best round's TFLOP/s */
  tflops: string;
  ms: string;
  best?: string;
  note: string;
}

const label = (c: Candidate) => `${fmtTile(c.tile)} out=${c.out ?? 'f32'}${c.transA ? ' tA' : ''}${c.transB ? ' tB' : ''}${c.bias ? ' bias' : ''}`;

interface Operands {
  a: Tensor;
  aT: Tensor;
  b: Tensor;
  bT: Tensor;
  out32: Tensor;
  out16: Tensor;
  zeros: Tensor;
}

async function operands(gpu: Gpu, n: number, seed: number): Promise<{ ops: Operands; a: Float64Array; b: Float64Array }> {
  const rng = new Rng(seed);
  const a = roundTo(rng.uniforms(n * n, -1, 1), 'f16');
  const b = roundTo(rng.uniforms(n * n, -1, 1), 'f16');
  const ops: Operands = {
    a: await gpu.tensorFrom(a, [n, n], 'f16', 'a'),
    aT: await gpu.tensorFrom(transpose(a, n, n), [n, n], 'f16', 'aT'),
    b: await gpu.tensorFrom(b, [n, n], 'f16', 'b'),
    bT: await gpu.tensorFrom(transpose(b, n, n), [n, n], 'f16', 'bT'),
    out32: await gpu.tensor([n, n], 'f32', 'out32'),
    out16: await gpu.tensor([n, n], 'f16', 'out16'),
    zeros: await gpu.tensorFrom(new Float32Array(n), [n], 'f32', 'zeros'),
  };
  return { ops, a, b };
}

const disposeAll = (o: Operands) => Object.values(o).forEach((x: Tensor) => x.dispose());

function call(gpu: Gpu, c: Candidate, o: Operands): Promise<void> {
  const out = c.out === 'f16' ? o.out16 : o.out32;
  return matmulSubgroup(
    gpu,
    { out },
    { a: c.transA ? o.aT : o.a, b: c.transB ? o.bT : o.b, ...(c.bias ? { bias: o.zeros } : {}) },
    { transA: c.transA ?? false, transB: c.transB ?? false, tile: c.tile },
  );
}

const tflops = (ms: number): string => ((2 * SIZE ** 3) / (ms * 1e-3) / 1e12).toFixed(1);

async function kernels(gpuIn: Gpu): Promise<Row[]> {
  let gpu = gpuIn;
  const perRound = Math.max(1, Math.ceil(REPS / ROUNDS));
  log(`\n== candidates: correctness at ${CHECK}^3, then speed at ${SIZE}^3 ==`);
  log(`(${ROUNDS} round-robin rounds of ${perRound} GPU-timed passes of ${PER_PASS} products per config, so clock drift hits all configs alike)`);
  let t0 = performance.now();
  let small = await operands(gpu, CHECK, 1);
  const ref = refMatmul(small.a, small.b, CHECK, CHECK, CHECK);
  let big = await operands(gpu, SIZE, 2);
  log(`(operands and cpu reference: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  const rows: Row[] = [];
  const fail = async (row: Row, e: unknown) => {
    row.note = (e as Error).message.split('\n').slice(0, 4).join(' ');
    log(`- ${row.label}: FAILED: ${(e as Error).message.split('\n').slice(0, 8).join('\n    ')}`);
    if (e instanceof DeviceLostError) {
      log('  (device lost: starting a new device)');
      gpu = await Gpu.create();
      small = await operands(gpu, CHECK, 1);
      big = await operands(gpu, SIZE, 2);
    } else {
      await gpu.sync().catch(() => undefined);
    }
  };
  // 1. compile and check every candidate
  const ok: { c: Candidate; row: Row; times: number[]; rounds: number[] }[] = [];
  for (const c of CANDIDATES) {
    const row: Row = { label: label(c), err: '-', tflops: '-', ms: '-', note: '' };
    rows.push(row);
    try {
      const why = subgroupMatmulUnsupported(gpu, {
        M: SIZE,
        N: SIZE,
        K: SIZE,
        dtypes: { a: 'f16', b: 'f16', out: c.out ?? 'f32' },
        transA: c.transA ?? false,
        transB: c.transB ?? false,
        tile: c.tile,
      });
      if (why) throw new Error(`unsupported: ${why}`);
      t0 = performance.now();
      await call(gpu, c, small.ops);
      const got = await gpu.read(c.out === 'f16' ? small.ops.out16 : small.ops.out32);
      const compileS = (performance.now() - t0) / 1000;
      const e = relErr(got, ref);
      row.err = e.toExponential(2);
      if (!(e < 1e-2)) throw new Error(`WRONG RESULT (relative error ${row.err})`);
      await call(gpu, c, big.ops); // compile the SIZE^3 specialization too
      await gpu.sync();
      log(`- ${row.label}: err ${row.err} (first call incl. compile ${compileS.toFixed(2)} s)`);
      ok.push({ c, row, times: [], rounds: [] });
    } catch (e) {
      await fail(row, e);
    }
  }
  // 2. bring the clocks up, then time round-robin
  t0 = performance.now();
  while (ok.length > 0 && performance.now() - t0 < 1500) {
    for (let i = 0; i < 10; i++) await call(gpu, ok[0]!.c, big.ops);
    await gpu.sync();
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const x of ok) {
      if (x.row.note) continue;
      try {
        const ts = await timePasses(gpu, () => call(gpu, x.c, big.ops), { warmup: 2, reps: perRound, inner: PER_PASS });
        x.times.push(...ts);
        x.rounds.push(median(ts));
      } catch (e) {
        await fail(x.row, e);
      }
    }
    log(`round ${r + 1}: ${ok.map((x) => (x.rounds[r] !== undefined ? tflops(x.rounds[r]!) : '-')).join(' ')}`);
  }
  for (const x of ok) {
    if (x.times.length === 0) continue;
    const ms = median(x.times);
    x.row.ms = ms.toFixed(3);
    x.row.tflops = tflops(ms);
    x.row.best = tflops(Math.min(...x.rounds));
  }
  disposeAll(small.ops);
  disposeAll(big.ops);
  if (gpu !== gpuIn) gpu.destroy();
  return rows;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const started = performance.now();
  const gpu = await Gpu.create();
  const info = gpu.adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
  log(`adapter: ${gpu.adapterName}`);
  log(`subgroup size: ${info.subgroupMinSize ?? '?'}..${info.subgroupMaxSize ?? '?'}; workgroup memory ${gpu.limits['maxComputeWorkgroupStorageSize']} bytes; invocations ${gpu.limits['maxComputeInvocationsPerWorkgroup']}`);
  log(`features: f16 ${gpu.features.f16}, subgroups ${gpu.features.subgroups}, timestamps ${gpu.features.timestamps}`);
  log(`subgroup-matrix configs (${gpu.features.subgroupMatrix.length}):`);
  for (const c of gpu.features.subgroupMatrix) log(`  ${c.componentType} x ${c.componentType} -> ${c.resultComponentType}  M=${c.M} N=${c.N} K=${c.K}`);
  const sm = subgroupMatrixShape(gpu);
  log(`kernel matrix shape: ${sm ? `${sm.M}x${sm.N}x${sm.K}` : 'none (no f16 -> f32 config): nothing to probe'}`);
  try {
    if (gpu.features.subgroupMatrix.length > 0 && ONLY !== 'kernels') await syntaxFacts(gpu);
    if (sm && ONLY !== 'syntax') {
      const rows = await kernels(gpu);
      log(`\n== summary (${SIZE}^3 f16 inputs, f32 accumulate; TFLOP/s = 2*n^3 / median time) ==`);
      const w = Math.max(...rows.map((r) => r.label.length));
      log(`${'config'.padEnd(w)}  ${'rel err'.padStart(9)}  ${'ms'.padStart(8)}  ${'TFLOP/s'.padStart(8)}  ${'best rnd'.padStart(8)}  note`);
      for (const r of rows) {
        log(`${r.label.padEnd(w)}  ${r.err.padStart(9)}  ${r.ms.padStart(8)}  ${r.tflops.padStart(8)}  ${(r.best ?? '-').padStart(8)}  ${r.note}`);
      }
      const best = rows.filter((r) => r.tflops !== '-').sort((x, y) => Number(y.tflops) - Number(x.tflops))[0];
      log(best ? `best: ${best.label} at ${best.tflops} TFLOP/s` : 'no candidate ran');
    }
  } finally {
    gpu.destroy();
    log(`(probe took ${((performance.now() - started) / 1000).toFixed(1)} s)`);
  }
}

await main();
process.exit(0);
