import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testGpu } from '../../testing/gpu.ts';
import { clearRows, markRows } from './rowmask.ts';

test('markRows marks exactly the rows read, across chunks; clearRows zeroes them', async () => {
  const gpu = await testGpu();
  const [rows, R] = [23, 7]; // chunks of 7, 7, 7, 2
  const masks = await Promise.all([7, 7, 7, 2].map((n, c) => gpu.tensorFrom(new Array(n).fill(0), [n], 'u32', `mask${c}`)));
  const read = [0, 5, 5, 6, 7, 20, 21, 22, 22, 99, 13];
  const idx = await gpu.tensorFrom(read, [read.length], 'u32', 'idx');
  await markRows(gpu, masks, R, idx);
  const got: number[] = [];
  for (const m of masks) got.push(...(await gpu.read(m)));
  assert.deepEqual(got, Array.from({ length: rows }, (_, r) => (read.includes(r) ? 1 : 0)));
  clearRows(gpu, masks);
  for (const m of masks) assert.ok((await gpu.read(m)).every((v) => v === 0));
  const bad = await gpu.tensor([7], 'f32', 'bad');
  await assert.rejects(markRows(gpu, [bad], R, idx), /markRows: masks\[0\] bad\[7\]:f32 must be one of u32/);
  await assert.rejects(markRows(gpu, [masks[3]!, masks[0]!], R, idx), /markRows: masks\[0\] mask3\[2\]:u32 must be \[7\]/);
  for (const t of [...masks, idx, bad]) t.dispose();
});
