// the runtime itself: transfers in every dtype, the pipeline cache, compile errors, arenas,
// the scratch pool, dispatch batching past one uniform staging block, timing, and lifetime.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addForward } from '../kernels/add/add.ts';
import { fill } from '../kernels/copy/copy.ts';
import { header, launch } from '../kernels/kernel.ts';
import { rmsnormForward } from '../kernels/rmsnorm/rmsnorm.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { mergeDawnFlags } from './adapter.ts';
import { Arena } from './buffers.ts';
import { Gpu } from './device.ts';
import { DTYPES, roundTo } from './dtype.ts';
import { StagingPool, stagingSize } from './staging.ts';
import { DeviceLostError, OutOfMemoryError, ShaderCompileError, ShapeError } from './errors.ts';
import { GpuTimer } from './timing.ts';

test('Dawn flags: toggle lists merge, other flags keep the last value', () => {
  const flags = mergeDawnFlags([
    'enable-dawn-features=vulkan_enable_f16_on_nvidia,allow_unsafe_apis',
    'disable-dawn-features=timestamp_quantization',
    'adapter=A',
    'enable-dawn-features=disable_robustness,allow_unsafe_apis',
    'adapter=B',
  ]);
  assert.deepEqual(flags, [
    'enable-dawn-features=vulkan_enable_f16_on_nvidia,allow_unsafe_apis,disable_robustness',
    'disable-dawn-features=timestamp_quantization',
    'adapter=B',
  ]);
});

test('adapter: real limits and features are requested', async () => {
  const gpu = await testGpu();
  assert.ok(gpu.adapterName.length > 0);
  // WebGPU's default is 128 MiB; engram asks for what the adapter has
  assert.equal(gpu.limits['maxStorageBufferBindingSize'], gpu.adapter.limits.maxStorageBufferBindingSize);
  assert.equal(gpu.limits['maxComputeWorkgroupStorageSize'], gpu.adapter.limits.maxComputeWorkgroupStorageSize);
  assert.equal(gpu.features.f16, gpu.adapter.features.has('shader-f16'));
});

for (const dtype of DTYPES) {
  test(`write/read round trip ${dtype} (odd length)`, async () => {
    const gpu = await testGpu();
    const v = new Rng(3).normals(1001, 10);
    const t = await gpu.tensorFrom(v, [7, 143], dtype, 'rt');
    assert.deepEqual([...(await gpu.read(t))], [...roundTo(v, dtype)].map(Math.fround));
    t.dispose();
  });
}

test('write/read round trip u32 and i32 (exact integers)', async () => {
  const gpu = await testGpu();
  const u = [0, 1, 0xfffffffe, 0xffffffff, 123456789];
  const i = [-2147483648, -1, 0, 7, 2147483647];
  const tu = await gpu.tensorFrom(u, [5], 'u32', 'u');
  const ti = await gpu.tensorFrom(i, [5], 'i32', 'i');
  assert.deepEqual([...(await gpu.read(tu))], u);
  assert.deepEqual([...(await gpu.read(ti))], i);
  tu.dispose();
  ti.dispose();
});

test('large transfers go through kept staging buffers: bytes intact, ordered after recorded work, the buffers reused', async () => {
  const gpu = await testGpu();
  const rng = new Rng(41);
  // 300,007 words: above the direct-write size, not a power of two (the staging size class rounds up)
  const n = 300_007;
  const t = await gpu.tensor([n], 'f32', 'big');
  const other = await gpu.tensor([n], 'f32', 'big2');
  for (let round = 0; round < 3; round++) {
    const values = Float32Array.from({ length: n }, () => rng.int(2 ** 24) - 2 ** 23);
    // a fill recorded before the write must not land after it
    await fill(gpu, t, 7);
    gpu.writeBytes(t, new Uint8Array(values.buffer));
    assert.deepEqual(await gpu.read(t), values);
    // a range of the middle, mapped and copied straight into another tensor's upload
    const at = 4 * 1001;
    const size = 4 * 200_000;
    await gpu.readView(t.buffer, t.offset + at, size, (bytes) => gpu.writeRange(other.buffer, other.offset + at, bytes));
    const got = await gpu.read(other);
    assert.deepEqual(got.subarray(1001, 201_001), values.subarray(1001, 201_001));
  }
  await gpu.sync();
  const kept = gpu.memory().staging;
  assert.ok(kept > 0, 'staging buffers are kept');
  for (let i = 0; i < 3; i++) {
    gpu.writeBytes(t, new Uint8Array(4 * n));
    await gpu.read(t);
  }
  await gpu.sync();
  assert.equal(gpu.memory().staging, kept, 'repeated transfers of one size reuse their staging buffers');
  await assert.rejects(gpu.readView(t.buffer, 2, 8, () => 0), /offset 2 and size 8 must be non-negative multiples of 4/);
  t.dispose();
  other.dispose();
});

test('staging pools: sizes round up to a power of two, free buffers are reused, the oldest dropped past the cap; write buffers come mapped', async () => {
  const gpu = await testGpu();
  assert.deepEqual([1, 4096, 4097, 5000, 1 << 20].map(stagingSize), [4096, 4096, 8192, 8192, 1 << 20]);
  const reads = new StagingPool(gpu.device, 'read', 8192);
  const [a, b, c] = [reads.take(100), reads.take(4096), reads.take(3000)];
  assert.equal(reads.bytes, 3 * 4096);
  for (const x of [a, b, c]) reads.give(x);
  // three free buffers of 4 KiB, a cap of 8 KiB: the first given back is dropped
  assert.equal(reads.bytes, 8192);
  const again = reads.take(4000);
  assert.equal(again, c, 'the most recently given buffer of the size comes first');
  assert.notEqual(reads.take(4000), a, 'a dropped buffer is not handed out');
  const writes = new StagingPool(gpu.device, 'write', 1 << 20);
  const w = writes.take(5000);
  assert.equal(w.size, 8192);
  assert.equal(w.mapState, 'mapped');
  new Uint8Array(w.getMappedRange()).fill(7);
  w.unmap();
  writes.give(w);
  await gpu.sync();
  for (let i = 0; i < 200 && w.mapState !== 'mapped'; i++) await new Promise((r) => setTimeout(r, 5));
  await Promise.resolve();
  // once mapped again, it is free: the next take of its size gets it back, mapped
  const back = writes.take(8192);
  assert.equal(back, w);
  assert.equal(back.mapState, 'mapped');
  back.unmap();
  reads.close();
  writes.close();
  assert.equal(reads.bytes + writes.bytes, 0);
});

test('an allocation out of memory frees the memory of destroyed buffers (reclaim) and tries once more; a second failure is an OutOfMemoryError naming it', async () => {
  const gpu = await testGpu();
  const device = gpu.device as { popErrorScope: GPUDevice['popErrorScope'] };
  const realPop = GPUDevice.prototype.popErrorScope;
  let fail = 0;
  let reclaims = 0;
  const realReclaim = gpu.reclaim.bind(gpu);
  (gpu as { reclaim: Gpu['reclaim'] }).reclaim = () => (reclaims++, realReclaim());
  // the next `fail` out-of-memory scopes report an error (what Dawn reports when vkAllocateMemory fails)
  device.popErrorScope = function (this: GPUDevice) {
    return realPop.call(this).then((e) => (fail-- > 0 ? ({ message: 'injected: VK_ERROR_OUT_OF_DEVICE_MEMORY' } as GPUError) : e));
  };
  try {
    const before = gpu.memory();
    fail = 1;
    const t = await gpu.tensor([1000], 'f32', 'second_try');
    assert.equal(reclaims, 1);
    gpu.write(t, Array.from({ length: 1000 }, (_, i) => i));
    assert.equal((await gpu.read(t))[999], 999);
    t.dispose();
    fail = 2;
    await assert.rejects(gpu.tensor([1000], 'f32', 'never'), (e: unknown) => e instanceof OutOfMemoryError && /allocating 'never' \(4000 bytes\): injected/.test(e.message));
    assert.equal(reclaims, 2);
    assert.deepEqual([gpu.memory().bytes, gpu.memory().buffers], [before.bytes + 4, before.buffers + 1], 'only the 4-byte buffer reclaim submits work on is kept');
  } finally {
    delete (device as { popErrorScope?: unknown }).popErrorScope;
    delete (gpu as { reclaim?: unknown }).reclaim;
  }
});

test('pipeline cache compiles once per source, also for concurrent requests', async () => {
  const gpu = await testGpu();
  const wgsl = `${header([{ name: 'y', type: 'f32', access: 'read_write' }])}
@compute @workgroup_size(1) fn main() { y[0] = 42.0; }`;
  const before = gpu.pipelines.compiled;
  const [a, b] = await Promise.all([gpu.pipelines.get('cache_probe', wgsl), gpu.pipelines.get('cache_probe', wgsl)]);
  assert.equal(a, b);
  assert.equal(gpu.pipelines.compiled, before + 1);
});

test('a WGSL compile error names the kernel and the line', async () => {
  const gpu = await testGpu();
  const wgsl = ['@group(0) @binding(1) var<storage, read_write> y: array<f32>;', '@compute @workgroup_size(1)', 'fn main() {', '  y[0] = undefined_thing;', '}'].join('\n');
  await assert.rejects(gpu.pipelines.get('broken_kernel', wgsl), (e: unknown) => {
    assert.ok(e instanceof ShaderCompileError);
    assert.equal(e.kernel, 'broken_kernel');
    assert.equal(e.line, 4);
    assert.match(e.message, /broken_kernel/);
    assert.match(e.message, /undefined_thing/);
    return true;
  });
});

test('shape mismatch throws a ShapeError naming the op and the shapes', async () => {
  const gpu = await testGpu();
  const x = await gpu.tensor([4, 8], 'f32', 'x');
  const w = await gpu.tensor([7], 'f32', 'w');
  const out = await gpu.tensor([4, 8], 'f32', 'out');
  const rstd = await gpu.tensor([4], 'f32', 'rstd');
  await assert.rejects(rmsnormForward(gpu, { out, rstd }, { x, w }), (e: unknown) => {
    assert.ok(e instanceof ShapeError);
    assert.match(e.message, /rmsnormForward/);
    assert.match(e.message, /w\[7\]:f32/);
    assert.match(e.message, /\[8\]/);
    return true;
  });
  const odd = await gpu.tensor([4, 7], 'bf16', 'odd');
  const w7 = await gpu.tensor([7], 'f32', 'w7');
  await assert.rejects(rmsnormForward(gpu, { out: odd, rstd }, { x: odd, w: w7 }), /odd innermost dimension/);
  for (const t of [x, w, out, rstd, odd, w7]) t.dispose();
});

test('arena: aligned tensors in one allocation, independent contents', async () => {
  const gpu = await testGpu();
  const arena = new Arena(gpu, 'params');
  arena.declare('a', [3], 'f32');
  arena.declare('b', [5, 2], 'bf16');
  arena.declare('c', [1], 'f16');
  const before = gpu.memory().buffers;
  await arena.commit();
  assert.equal(gpu.memory().buffers, before + 1);
  const align = gpu.device.limits.minStorageBufferOffsetAlignment;
  for (const n of arena.names()) assert.equal(arena.get(n).offset % align, 0);
  gpu.write(arena.get('a'), [1, 2, 3]);
  gpu.write(arena.get('b'), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  gpu.write(arena.get('c'), [0.5]);
  assert.deepEqual([...(await gpu.read(arena.get('a')))], [1, 2, 3]);
  assert.deepEqual([...(await gpu.read(arena.get('b')))], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual([...(await gpu.read(arena.get('c')))], [0.5]);
  assert.throws(() => arena.get('nope'), /arena 'params' has no tensor 'nope'/);
  arena.dispose();
  assert.equal(gpu.memory().buffers, before);
});

test('more dispatches than one uniform staging block keep their own parameters', async () => {
  const gpu = await testGpu();
  // each fill has its own uniform block; 3000 blocks overflow the staging area several times
  const ts = await Promise.all(Array.from({ length: 6 }, (_, i) => gpu.tensor([33], 'f32', `t${i}`)));
  for (let k = 0; k < 3000; k++) await fill(gpu, ts[k % 6]!, k);
  for (let i = 0; i < 6; i++) {
    const last = 3000 - 6 + i;
    assert.deepEqual([...(await gpu.read(ts[i]!))], new Array(33).fill(last));
  }
  for (const t of ts) t.dispose();
});

test('dispatches reuse a bind group per pipeline and bound ranges; a destroyed buffer\'s groups go with it', async () => {
  const gpu = await testGpu();
  const a = await gpu.tensor([40], 'f32', 'a');
  await fill(gpu, a, 1);
  gpu.flush();
  const made = gpu.bindGroupsMade;
  // the same ranges (each submit starts the uniform blocks over, so a decode step's repeat): no new group
  for (let k = 2; k < 6; k++) {
    await fill(gpu, a, k);
    gpu.flush();
  }
  assert.equal(gpu.bindGroupsMade, made);
  assert.deepEqual([...(await gpu.read(a))], new Array(40).fill(5));
  await fill(gpu, a.leading([8]), 7); // another range of the buffer: a group of its own
  gpu.flush();
  assert.equal(gpu.bindGroupsMade, made + 1);
  a.dispose();
  // new buffers (Dawn may hand out the same memory): their own groups, and the right bytes
  for (let k = 0; k < 3; k++) {
    const b = await gpu.tensor([40], 'f32', 'b');
    await fill(gpu, b, 10 + k);
    gpu.flush();
    assert.deepEqual([...(await gpu.read(b))], new Array(40).fill(10 + k));
    b.dispose();
  }
  assert.equal(gpu.bindGroupsMade, made + 4);
  // a kept tensor bound with a fresh one each time (a decode step's ids): nothing piles up
  const w = await gpu.tensor([40], 'f32', 'w');
  const out = await gpu.tensor([40], 'f32', 'out');
  await fill(gpu, w, 2);
  const kept = gpu.bindGroupsKept();
  for (let k = 0; k < 5; k++) {
    const x = await gpu.tensorFrom(new Array(40).fill(k), [40], 'f32', 'x');
    await addForward(gpu, { out }, { a: w, b: x });
    assert.deepEqual([...(await gpu.read(out))], new Array(40).fill(2 + k));
    x.dispose();
  }
  assert.deepEqual(gpu.bindGroupsKept(), kept);
  w.dispose();
  out.dispose();
});

test('GPU timer measures a region', async () => {
  const gpu = await testGpu();
  assert.ok(gpu.features.timestamps, 'the test adapter should expose timestamp-query');
  const t = await gpu.tensor([1 << 16], 'f32', 'timed');
  const timer = new GpuTimer(gpu);
  timer.begin();
  for (let k = 0; k < 4; k++) await fill(gpu, t, k);
  const ms = await timer.end();
  assert.ok(ms > 0 && ms < 10_000, `timer read ${ms} ms`);
  timer.begin();
  await fill(gpu, t, 1);
  gpu.write(t, new Array(1 << 16).fill(0)); // a write flushes: the region is split
  await assert.rejects(timer.end(), /split by a flush/);
  timer.dispose();
  t.dispose();
});

test('a destroyed Gpu refuses work with DeviceLostError', async () => {
  await testGpu(); // keep the shared one alive: destroying this one must not affect it
  const gpu = await Gpu.create();
  const t = await gpu.tensor([4], 'f32', 'x');
  gpu.destroy();
  await assert.rejects(gpu.tensor([4]), DeviceLostError);
  await assert.rejects(fill(gpu, t, 1), DeviceLostError);
  const shared = await testGpu();
  const u = await shared.tensorFrom([1, 2], [2], 'f32', 'u');
  assert.deepEqual([...(await shared.read(u))], [1, 2]);
  u.dispose();
});

test('launch() refuses more storage bindings than the adapter allows, naming the kernel', async () => {
  const gpu = await testGpu();
  const n = (gpu.limits['maxStorageBuffersPerShaderStage'] ?? 8) + 1;
  const ts = await Promise.all(Array.from({ length: n }, (_, i) => gpu.tensor([1], 'f32', `t${i}`)));
  await assert.rejects(launch(gpu, { name: 'too_wide', wgsl: '', storage: ts, workgroups: [1] }), new RegExp(`too_wide' binds ${n} storage buffers`));
  for (const t of ts) t.dispose();
});

test('launch() reports a missing parameter clearly', async () => {
  const gpu = await testGpu();
  const t = await gpu.tensor([4], 'f32', 'x');
  const wgsl = `${header([{ name: 'y', type: 'f32', access: 'read_write' }], [['n', 'u32']])}
@compute @workgroup_size(1) fn main() { y[0] = f32(p.n); }`;
  await assert.rejects(launch(gpu, { name: 'needs_n', wgsl, storage: [t], params: [['n', 'u32']], values: {}, workgroups: [1] }), /parameter 'n'/);
  t.dispose();
});
