// probe of device-to-device copy bandwidth on the adapter at hand: which kernel shape and which
// way of timing gets near the chip's copy ceiling (torch: ~3.0 TB/s on an H100).
//
//   node --import tsx bench/probe_copy.ts         PROBE_MIB=1024 (buffer size)  PROBE_SECONDS=2 (warm-up)
//
// 1. warm-up: back-to-back copies for PROBE_SECONDS (clocks up), with nvidia-smi's view of the
//    clocks before and after when nvidia-smi is there.
// 2. kernels: engram's copy at each vec4-per-thread count; a plain one-vec4-per-thread copy at
//    workgroup sizes 64..1024; a grid-stride copy over a fixed number of workgroups.
// 3. timing: each kernel timed three ways: timestamp-query regions of 10 and of 100 calls
//    (median region), and wall clock around 100 calls submitted one by one.
// bandwidth counts bytes read plus bytes written. a table closes the run.

import { execFileSync } from 'node:child_process';
import { Gpu } from '../src/gpu/device.ts';
import type { Tensor } from '../src/gpu/tensor.ts';
import { COPY_PER_THREAD, copy } from '../src/kernels/copy/copy.ts';
import { grid1d } from '../src/kernels/kernel.ts';
import { Rng } from '../src/testing/rng.ts';
import { median, timePasses, warmUp } from './lib.ts';

const MIB = Number(process.env['PROBE_MIB'] ?? 1024);
const SECONDS = Number(process.env['PROBE_SECONDS'] ?? 2);

function smi(): string {
  try {
    return execFileSync(
      'nvidia-smi',
      ['--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active', '--format=csv,noheader'],
      { encoding: 'utf8' },
    ).trim();
  } catch {
    return '(no nvidia-smi)';
  }
}

const plainWgsl = (wg: number) => /* wgsl */ `
@group(0) @binding(0) var<uniform> p: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.y;
  if (i < p.x) { dst[i] = src[i]; }
}`;

// grid-stride: p.x vec4s, p.z threads in the grid; 4 loads in flight per iteration
const strideWgsl = /* wgsl */ `
@group(0) @binding(0) var<uniform> p: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let s = p.z;
  var i = g.x;
  loop {
    if (i + 3u * s >= p.x) { break; }
    let a = src[i]; let b = src[i + s]; let c = src[i + 2u * s]; let d = src[i + 3u * s];
    dst[i] = a; dst[i + s] = b; dst[i + 2u * s] = c; dst[i + 3u * s] = d;
    i += 4u * s;
  }
  for (; i < p.x; i += s) { dst[i] = src[i]; }
}`;

async function main(): Promise<void> {
  const gpu = await Gpu.create();
  console.log(`adapter: ${gpu.adapterName}`);
  const bytes = Math.min(MIB * 2 ** 20, Math.floor(gpu.device.limits.maxStorageBufferBindingSize / 16) * 16);
  const n = bytes / 4;
  const src = await gpu.tensorFrom(new Rng(1).uniforms(n), [n], 'f32', 'src');
  const dst = await gpu.tensor([n], 'f32', 'dst');
  const units = n / 4;

  const kernels: [string, () => Promise<void>][] = [];
  for (const per of COPY_PER_THREAD) kernels.push([`engram x${per}`, () => copy(gpu, dst, src, per)]);
  for (const wg of [64, 128, 256, 512, 1024]) {
    const pipe = await gpu.pipelines.get(`probe_plain_${wg}`, plainWgsl(wg));
    const [x, y] = grid1d(gpu, Math.ceil(units / wg));
    const params = new Uint32Array([units, x * wg, 0, 0]).buffer;
    kernels.push([`plain wg${wg}`, async () => gpu.dispatch(pipe, [dst, src], params, [x, y])]);
  }
  const sms = 132;
  for (const perSm of [4, 8, 16, 32]) {
    const pipe = await gpu.pipelines.get('probe_stride', strideWgsl);
    const groups = sms * perSm;
    const params = new Uint32Array([units, 0, groups * 256, 0]).buffer;
    kernels.push([`stride ${groups}wg`, async () => gpu.dispatch(pipe, [dst, src], params, [groups])]);
  }

  console.log(`before warm-up: ${smi()}`);
  await warmUp(gpu, () => copy(gpu, dst, src), SECONDS);
  console.log(`after warm-up:  ${smi()}`);

  const gbps = (ms: number) => (2 * bytes) / ms / 1e6;
  const rows: string[] = [];
  for (const [name, fn] of kernels) {
    const r10 = median(await timePasses(gpu, fn, { reps: 7, inner: 10 }));
    const r100 = median(await timePasses(gpu, fn, { reps: 3, inner: 100 }));
    await gpu.sync();
    const w0 = performance.now();
    for (let i = 0; i < 100; i++) {
      await fn();
      gpu.flush();
    }
    await gpu.sync();
    const wall = (performance.now() - w0) / 100;
    const row = `${name.padEnd(16)} ts10 ${gbps(r10).toFixed(0).padStart(5)}  ts100 ${gbps(r100).toFixed(0).padStart(5)}  wall ${gbps(wall).toFixed(0).padStart(5)} GB/s`;
    console.log(row);
    rows.push(row);
  }
  console.log(`end: ${smi()}`);
  // check the last copy really copied
  const back = (await gpu.read(dst)) as Float32Array;
  const want = (await gpu.read(src)) as Float32Array;
  let bad = 0;
  for (let i = 0; i < n; i += 4099) if (back[i] !== want[i]) bad++;
  console.log(`check: ${bad} mismatches in ${Math.ceil(n / 4099)} samples`);
  console.log(`\n== copy ${bytes / 2 ** 20} MiB ==\n${rows.join('\n')}`);
  for (const t of [src, dst] as Tensor[]) t.dispose();
  gpu.destroy();
}

await main();
