// probe of what a CPU adapter (lavapipe) charges for, and of the matmul kernels on it: the
// reasons behind src/kernels/matmul/matmul_cpu.ts.
//
//   node --import tsx bench/probe_cpu_matmul.ts
//
// 1. cost per lane of a load from storage (one address for all lanes, consecutive, strided) and
//    from workgroup memory, and of a lane's multiply-add (8 independent vec4 chains, unrolled):
//    ns per lane-operation over the whole adapter.
// 2. GFLOP/s of products at a small model's shapes: the tiled kernel (workgroup memory,
//    barriers), a barrier-free kernel with a lane per 4 columns (every lane loads its own a
//    values), and the cpu path (subgroup broadcasts of a).
// writes bench/results/cpu_probe-<device>-<date>.json.

import { Gpu } from '../src/gpu/device.ts';
import { matmul } from '../src/kernels/matmul/matmul.ts';
import { Rng } from '../src/testing/rng.ts';
import { deviceName, median, writeResults } from './lib.ts';

const gpu = await Gpu.create();
const dev = gpu.device;
const results: Record<string, number> = {};

async function wallMs(fn: () => Promise<void> | void, reps = 3): Promise<number> {
  await fn();
  await gpu.sync();
  const ts: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await fn();
    await gpu.sync();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

// ---------------------------------------------------------------- 1. loads and multiply-adds

const LANES = 65536; // invocations
const ITERS = 2048; // operations per invocation
const storage = gpu.createBuffer('probe', 1 << 22, GPUBufferUsage.STORAGE);

async function rawKernel(code: string): Promise<() => void> {
  const pipe = await dev.createComputePipelineAsync({ layout: 'auto', compute: { module: dev.createShaderModule({ code }), entryPoint: 'main' } });
  const bg = dev.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 1, resource: { buffer: storage } }] });
  return () => {
    gpu.encode((enc) => {
      const p = enc.beginComputePass();
      p.setPipeline(pipe);
      p.setBindGroup(0, bg);
      p.dispatchWorkgroups(LANES / 64);
      p.end();
    });
  };
}

const loadKernel = (index: string, workgroup = false) => /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> A: array<f32>;
${workgroup ? 'var<workgroup> S: array<f32, 2048>;' : ''}
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  ${workgroup ? 'for (var i = l; i < 2048u; i += 64u) { S[i] = A[i]; }\n  workgroupBarrier();' : ''}
  var s = 0.0;
  for (var k = 0u; k < ${ITERS / 8}u; k++) {
    ${Array.from({ length: 8 }, (_, u) => `s += ${workgroup ? 'S' : 'A'}[(${index.replace('K', `(k * 8u + ${u}u)`)}) & ${workgroup ? 2047 : 262143}u];`).join(' ')}
  }
  A[262144u + (g.x & 65535u)] = s;
}`;

const fmaKernel = /* wgsl */ `
@group(0) @binding(1) var<storage, read_write> A: array<vec4<f32>>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  ${Array.from({ length: 8 }, (_, r) => `var a${r} = vec4<f32>(f32(g.x + ${r}u));`).join(' ')}
  let b = vec4<f32>(0.999, 0.998, 0.997, 0.996);
  for (var k = 0u; k < ${ITERS / 32 / 8}u; k++) {
    ${Array.from({ length: 8 }, () => Array.from({ length: 8 }, (_, r) => `a${r} = fma(a${r}, b, vec4<f32>(0.001));`).join(' ')).join('\n    ')}
  }
  A[g.x & 65535u] = ${Array.from({ length: 8 }, (_, r) => `a${r}`).join(' + ')};
}`;

const lanesOps = LANES * ITERS;
for (const [name, code] of [
  ['load_uniform', loadKernel('K + w.x * 7u')],
  ['load_consecutive', loadKernel('K * 64u + l')],
  ['load_strided', loadKernel('K * 64u + l * 17u')],
  ['load_workgroup', loadKernel('K + l', true)],
  ['fma', fmaKernel],
] as const) {
  const ms = await wallMs(await rawKernel(code));
  results[`${name}_ns_per_lane_op`] = (ms * 1e6) / lanesOps;
}

// ---------------------------------------------------------------- 2. products

const laneColumnsWgsl = (R: number) => /* wgsl */ `
struct P { M: u32, K: u32, N: u32, z: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> C: array<f32>;
@group(0) @binding(2) var<storage, read> A: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<vec4<f32>>;
@compute @workgroup_size(32) fn main(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let c4 = w.x * 32u + l;
  let m0 = w.y * ${R}u;
  ${Array.from({ length: R }, (_, r) => `var a${r} = vec4<f32>();`).join(' ')}
  for (var k = 0u; k < p.K; k++) {
    let b = B[k * (p.N / 4u) + c4];
    ${Array.from({ length: R }, (_, r) => `a${r} += A[(m0 + ${r}u) * p.K + k] * b;`).join(' ')}
  }
  ${Array.from({ length: R }, (_, r) => `{ let o = (m0 + ${r}u) * p.N + c4 * 4u; C[o] = a${r}.x; C[o + 1u] = a${r}.y; C[o + 2u] = a${r}.z; C[o + 3u] = a${r}.w; }`).join('\n  ')}
}`;

const rng = new Rng(1);
for (const [M, K, N] of [
  [1024, 128, 2048],
  [1024, 128, 384],
  [1024, 344, 128],
] as const) {
  const shape = `${M}x${K}x${N}`;
  const flops = 2 * M * N * K;
  const a = await gpu.tensorFrom(rng.normals(M * K), [M, K], 'f32', 'a');
  const b = await gpu.tensorFrom(rng.normals(K * N), [K, N], 'f32', 'b');
  const out = await gpu.tensor([M, N], 'f32', 'out');
  for (const path of ['tiled', 'cpu'] as const) {
    const ms = await wallMs(() => matmul(gpu, { out }, { a, b }, { path }));
    results[`matmul_${path}_${shape}_GFLOPs`] = flops / ms / 1e6;
  }
  const R = 8;
  const pipe = await dev.createComputePipelineAsync({ layout: 'auto', compute: { module: dev.createShaderModule({ code: laneColumnsWgsl(R) }), entryPoint: 'main' } });
  const u = gpu.createBuffer('probe_params', 16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  dev.queue.writeBuffer(u, 0, Uint32Array.from([M, K, N, 0]));
  const bg = dev.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: u } }, { binding: 1, resource: out.binding() }, { binding: 2, resource: a.binding() }, { binding: 3, resource: b.binding() }],
  });
  const ms = await wallMs(() =>
    gpu.encode((enc) => {
      const p = enc.beginComputePass();
      p.setPipeline(pipe);
      p.setBindGroup(0, bg);
      p.dispatchWorkgroups(N / 4 / 32, M / R);
      p.end();
    }),
  );
  results[`matmul_lane_columns_${shape}_GFLOPs`] = flops / ms / 1e6;
  gpu.destroyBuffer(u);
  for (const t of [a, b, out]) t.dispose();
}

for (const [k, v] of Object.entries(results)) console.log(`${k.padEnd(40)} ${v.toFixed(3)}`);
console.log(`wrote ${writeResults('cpu_probe', deviceName(gpu), results, {}, 'node --import tsx bench/probe_cpu_matmul.ts')}`);
gpu.destroyBuffer(storage);
gpu.destroy();
