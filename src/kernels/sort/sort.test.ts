import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/sort.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { scanExclusive, segmentStarts, sortPairs } from './sort.ts';

/** runs sortPairs on the GPU and checks keys and payload exactly against a stable JS sort */
async function checkSort(name: string, keys: Uint32Array, keyBits?: number, withValues = true) {
  const gpu = await testGpu();
  const n = keys.length;
  const rng = new Rng(n + 17);
  const values = Uint32Array.from({ length: n }, () => rng.int(2 ** 32));
  const tk = await gpu.tensorFrom(keys, [n], 'u32', 'keys');
  const tv = await gpu.tensorFrom(values, [n], 'u32', 'values');
  const keysOut = await gpu.tensor([n], 'u32', 'keysOut');
  const valuesOut = await gpu.tensor([n], 'u32', 'valuesOut');
  await sortPairs(gpu, { keysOut, valuesOut }, withValues ? { keys: tk, values: tv } : { keys: tk }, keyBits === undefined ? {} : { keyBits });
  const want = ref.sortPairs(keys, withValues ? values : undefined, keyBits);
  const gotK = await gpu.read(keysOut);
  const gotV = await gpu.read(valuesOut);
  assert.deepEqual(gotK, want.keys, `${name}: keys`);
  assert.deepEqual(gotV, want.values, `${name}: values (stability)`);
  // inputs are left alone
  assert.deepEqual(await gpu.read(tk), keys, `${name}: keys input changed`);
  for (const t of [tk, tv, keysOut, valuesOut]) t.dispose();
}

const randomKeys = (n: number, hi: number, seed: number) => {
  const rng = new Rng(seed);
  return Uint32Array.from({ length: n }, () => rng.int(hi));
};

test('sort: n=1', () => checkSort('n=1', Uint32Array.of(7), 4));

test('sort: many ties, n not a power of two, 20-bit keys', () => checkSort('ties', randomKeys(5003, 37, 1), 20));

test('sort: full 32-bit keys, several tiles', () => checkSort('u32', randomKeys(3001, 2 ** 32, 2)));

test('sort: already sorted and reversed', async () => {
  const n = 4099;
  const sorted = Uint32Array.from({ length: n }, (_, i) => i >> 2);
  await checkSort('sorted', sorted, 12);
  await checkSort('reversed', sorted.slice().reverse(), 12);
});

test('sort: all keys equal keeps input order', () => checkSort('equal', new Uint32Array(2500).fill(9), 4));

test('sort: without values the payload is the permutation', () => checkSort('iota', randomKeys(3333, 1000, 3), 10, false));

test('sort: keys over 2^keyBits saturate and sort last in input order', async () => {
  const keys = randomKeys(1500, 300, 4); // keyBits 8: keys 255..299 all become 255
  await checkSort('saturate', keys, 8);
});

test('sort: one key used by most positions, multi-level scan (n > 64k), 1-bit and odd key widths', async () => {
  const rng = new Rng(5);
  const n = 70001;
  const keys = Uint32Array.from({ length: n }, () => (rng.next() < 0.8 ? 12345 : rng.int(1 << 17)));
  await checkSort('heavy', keys, 17);
  await checkSort('1 bit', randomKeys(1025, 2, 6), 1);
  await checkSort('7 bits', randomKeys(1023, 128, 7), 7);
});

test('scanExclusive: three levels', async () => {
  const gpu = await testGpu();
  const M = 1024 * 1024 + 777;
  const rng = new Rng(8);
  const data = Uint32Array.from({ length: M }, () => rng.int(5));
  const t = await gpu.tensorFrom(data, [M], 'u32', 'data');
  await scanExclusive(gpu, t);
  const got = await gpu.read(t);
  let s = 0;
  for (let i = 0; i < M; i++) {
    if (got[i] !== s) assert.fail(`scan[${i}] = ${got[i]}, want ${s}`);
    s += data[i]!;
  }
  t.dispose();
});

test('segmentStarts: runs of sorted keys', async () => {
  const gpu = await testGpu();
  for (const keys of [Uint32Array.of(3), Uint32Array.of(1, 1, 1), ref.sortPairs(randomKeys(3000, 200, 9)).keys]) {
    const n = keys.length;
    const tk = await gpu.tensorFrom(keys, [n], 'u32', 'keys');
    const starts = await gpu.tensor([n + 1], 'u32', 'starts');
    const count = await gpu.tensor([1], 'u32', 'count');
    await segmentStarts(gpu, { starts, count }, { keys: tk });
    const want = ref.segmentStarts(keys);
    const c = (await gpu.read(count))[0]!;
    assert.equal(c, want.length - 1);
    assert.deepEqual((await gpu.read(starts)).slice(0, c + 1), Uint32Array.from(want));
    for (const t of [tk, starts, count]) t.dispose();
  }
  // no keys: one run boundary, starts = [0]
  const tk = await gpu.tensorFrom([], [0], 'u32', 'keys');
  const starts = await gpu.tensorFrom([7], [1], 'u32', 'starts');
  const count = await gpu.tensorFrom([7], [1], 'u32', 'count');
  await segmentStarts(gpu, { starts, count }, { keys: tk });
  assert.deepEqual([...(await gpu.read(count)), ...(await gpu.read(starts))], [0, 0]);
  for (const t of [tk, starts, count]) t.dispose();
});

test('sort: shape, dtype and aliasing errors', async () => {
  const gpu = await testGpu();
  const k = await gpu.tensorFrom([3, 1, 2], [3], 'u32', 'keys');
  const ko = await gpu.tensor([3], 'u32', 'keysOut');
  const vo = await gpu.tensor([4], 'u32', 'valuesOut');
  const h = await gpu.tensor([3], 'f16', 'half');
  const f = await gpu.tensor([3], 'f32', 'words');
  const f1 = await gpu.tensor([1], 'f32', 'cnt');
  await assert.rejects(sortPairs(gpu, { keysOut: ko, valuesOut: vo }, { keys: k }), (e: Error) => e instanceof ShapeError && /sortPairs.*valuesOut\[4\]/.test(e.message));
  await assert.rejects(sortPairs(gpu, { keysOut: ko, valuesOut: h }, { keys: k }), (e: Error) => e instanceof ShapeError && /sortPairs.*half\[3\]:f16/.test(e.message));
  await assert.rejects(sortPairs(gpu, { keysOut: k, valuesOut: ko }, { keys: k }), (e: Error) => e instanceof ShapeError && /sortPairs.*overlap/.test(e.message));
  await assert.rejects(sortPairs(gpu, { keysOut: ko, valuesOut: h }, { keys: k }, { keyBits: 33 }), (e: Error) => e instanceof ShapeError && /keyBits/.test(e.message));
  // u32 data must be a 'u32' tensor: f32 words are not accepted
  await assert.rejects(sortPairs(gpu, { keysOut: ko, valuesOut: k }, { keys: f }), (e: Error) => e instanceof ShapeError && /sortPairs: keys words\[3\]:f32 must be one of u32/.test(e.message));
  await assert.rejects(scanExclusive(gpu, f), (e: Error) => e instanceof ShapeError && /scanExclusive: data words\[3\]:f32/.test(e.message));
  await assert.rejects(segmentStarts(gpu, { starts: vo, count: f1 }, { keys: k }), (e: Error) => e instanceof ShapeError && /segmentStarts: count cnt\[1\]:f32 must be one of u32/.test(e.message));
  for (const t of [k, ko, vo, h, f, f1]) t.dispose();
});
