import assert from 'node:assert/strict';
import { test } from 'node:test';
import { roundTo } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { FRONT_NONE, memoryFront } from './memory_front.ts';

// awkward: 3 batch rows with 2 slots, one row with one memory (a zero slot) and one with none;
// a memory used by two rows; layer 1 of 3; rows from 5 on (the sink's before them stay); HS 6
test('memoryFront: each slot\'s memory at the layer, widened from bf16, as attention rows after row0; empty slots zero; other rows untouched', async () => {
  const gpu = await testGpu();
  const rng = new Rng(21);
  const [Nm, L, H, T, D, B, M, S, layer, row0] = [4, 3, 2, 3, 6, 3, 2, 16, 1, 5];
  const mem = roundTo(rng.normals(Nm * L * 2 * H * T * D), 'bf16');
  const idx = Uint32Array.from([2, 0, 3, FRONT_NONE, FRONT_NONE, FRONT_NONE]);
  idx[5] = 2; // row 2's second slot: memory 2 again, its first empty
  const garbage = Float32Array.from({ length: B * S * H * D }, () => rng.normal());
  const [tm, ti] = [await gpu.tensorFrom(mem, [Nm, L, 2, H, T, D], 'bf16'), await gpu.tensorFrom(idx, [B, M], 'u32')];
  const [tk, tv] = [await gpu.tensorFrom(garbage, [B, S, H, D]), await gpu.tensorFrom(garbage.map((x) => -x), [B, S, H, D])];
  await memoryFront(gpu, { k: tk, v: tv }, { mem: tm, idx: ti }, { layer, row0 });
  for (const [which, t, init] of [[0, tk, garbage], [1, tv, garbage.map((x) => -x)]] as const) {
    const want = Float32Array.from(init);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < M; i++) {
        const m = idx[b * M + i]!;
        for (let tt = 0; tt < T; tt++) {
          for (let g = 0; g < H; g++) {
            for (let x = 0; x < D; x++) {
              want[((b * S + row0 + i * T + tt) * H + g) * D + x] = m === FRONT_NONE ? 0 : mem[((((m * L + layer) * 2 + which) * H + g) * T + tt) * D + x]!;
            }
          }
        }
      }
    }
    assert.deepEqual(await gpu.read(t), want, which === 0 ? 'keys' : 'values');
  }
  await assert.rejects(memoryFront(gpu, { k: tk, v: tv }, { mem: tm, idx: ti }, { layer: 3, row0 }), (e: Error) => e instanceof ShapeError && /layer 3 is not one of the memories' 3/.test(e.message));
  await assert.rejects(memoryFront(gpu, { k: tk, v: tv }, { mem: tm, idx: ti }, { layer, row0: 11 }), /rows 11 .. 17 do not fit the cache's 16/);
  for (const x of [tm, ti, tk, tv]) x.dispose();
});
