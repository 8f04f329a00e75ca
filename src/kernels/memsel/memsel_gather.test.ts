import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError } from '../../gpu/errors.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { MEMSEL_NONE } from './memsel.ts';
import { memselGather } from './memsel_gather.ts';

test('memselGather: each picked (position, KV head) row of k and v; a missing pick or one past T gives zeros', async () => {
  const gpu = await testGpu();
  const rng = new Rng(9);
  const [B, T, Hkv, d, K] = [3, 7, 2, 6, 3];
  const k = Float32Array.from({ length: B * T * Hkv * d }, () => rng.normal());
  const v = Float32Array.from({ length: B * T * Hkv * d }, () => rng.normal());
  const idx = Uint32Array.from({ length: B * Hkv * K }, () => rng.int(T));
  idx[4] = MEMSEL_NONE;
  idx[9] = T;
  const [tk, tv, ti] = [await gpu.tensorFrom(k, [B, T, Hkv, d]), await gpu.tensorFrom(v, [B, T, Hkv, d]), await gpu.tensorFrom(idx, [B, Hkv, K], 'u32')];
  const [ok, ov] = [await gpu.tensor([B, Hkv, K, d]), await gpu.tensor([B, Hkv, K, d])];
  gpu.write(ok, new Array(ok.size).fill(7)); // every element written, the zero rows too
  await memselGather(gpu, { ok, ov }, { k: tk, v: tv, indices: ti });
  const want = (src: Float32Array) => {
    const out = new Float32Array(B * Hkv * K * d);
    for (let b = 0; b < B; b++) {
      for (let g = 0; g < Hkv; g++) {
        for (let j = 0; j < K; j++) {
          const slot = (b * Hkv + g) * K + j;
          const pos = idx[slot]!;
          if (pos < T) out.set(src.subarray(((b * T + pos) * Hkv + g) * d, ((b * T + pos) * Hkv + g + 1) * d), slot * d);
        }
      }
    }
    return out;
  };
  assert.deepEqual(await gpu.read(ok), want(k));
  assert.deepEqual(await gpu.read(ov), want(v));
  const bad = await gpu.tensor([B, Hkv, K, d + 1]);
  await assert.rejects(memselGather(gpu, { ok: bad, ov }, { k: tk, v: tv, indices: ti }), (e: Error) => e instanceof ShapeError && /ok/.test(e.message));
  for (const t of [tk, tv, ti, ok, ov, bad]) t.dispose();
});
