// decoding rows of different lengths and fronts in one SlotCache step equals decoding each row
// alone through the lockstep KvCache path (generate.ts lastLogits), step after step.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { lastLogits } from '../infer/generate.ts';
import { TOL, assertClose } from '../testing/allclose.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { parseModelConfig } from './config.ts';
import { copyIntoSlot, createSlotCache, disposeSlotCache, setSlotFront, slotState, writeSlotStep } from './slot_cache.ts';
import { Transformer } from './transformer.ts';

test('slot decoding: rows at their own lengths, positions and fronts match each row decoded alone', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 50, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 64 });
  const model = await Transformer.create(gpu, config, 7);
  const rng = new Rng(9);
  const HS = config.dim / config.heads;
  const width = config.kvHeads * HS;
  const frontMax = [5, 3];
  // row 0: 3-token prompt, no front, position 0; row 1: idle; row 2: 9 tokens with fronts of 4 and
  // 3 rows, context from position 20; row 3: 1 token, front only at block 0 (2 rows)
  const rows = [
    { slot: 0, prompt: [1, 2, 3], pos0: 0, fronts: [0, 0] },
    { slot: 2, prompt: [5, 9, 11, 2, 40, 3, 3, 7, 1], pos0: 20, fronts: [4, 3] },
    { slot: 3, prompt: [17], pos0: 6, fronts: [2, 0] },
  ];
  const STEPS = 6;
  const sc = await createSlotCache(gpu, config, { slots: 4, max: 24, frontMax });
  const st = slotState(sc);
  const alone = [];
  for (const r of rows) {
    const fr = r.fronts.map((f) => ({ k: Float32Array.from({ length: f * width }, () => rng.normal()), v: Float32Array.from({ length: f * width }, () => rng.normal()) }));
    // the row alone: a lockstep cache of batch 1
    const kv = await model.createCache(24, { frontMax, pos0: r.pos0, batch: 1 });
    for (const [l, f] of fr.entries()) await model.setCacheFront(kv, l, f.k, f.v);
    const first = (await lastLogits(gpu, model, [r.prompt], { cache: kv }))[0]!;
    // the same prompt into its slot
    const kv2 = await model.createCache(24, { frontMax, pos0: r.pos0, batch: 1 });
    for (const [l, f] of fr.entries()) await model.setCacheFront(kv2, l, f.k, f.v);
    await lastLogits(gpu, model, [r.prompt], { cache: kv2 });
    copyIntoSlot(gpu, kv2, sc, st, r.slot);
    for (const t of [...kv2.k, ...kv2.v]) t.dispose();
    alone.push({ kv, logits: [first] as Float32Array[], tokens: [] as number[] });
  }
  // row 3's block-0 front is set again after it joined (a re-retrieval): the same rows, so nothing changes
  const f3 = Float32Array.from({ length: 2 * width }, () => 0);
  setSlotFront(gpu, sc, st, 1, 3, f3.subarray(0, 0), f3.subarray(0, 0));
  assert.deepEqual(st.front.map((f) => f[3]), [2, 0]);
  for (let s = 0; s < STEPS; s++) {
    // each row's next token: a fixed pseudo-random choice (the same for both paths)
    const next = rows.map(() => rng.int(config.vocabSize));
    const ids = new Uint32Array(4);
    rows.forEach((r, i) => (ids[r.slot] = next[i]!));
    writeSlotStep(gpu, sc, st);
    const tIds = await gpu.tensorFrom(ids, [4, 1], 'u32', 'ids');
    const logits = await model.decodeSlots(tIds, sc);
    const got = (await gpu.read(logits)) as Float32Array;
    logits.dispose();
    tIds.dispose();
    for (const [i, r] of rows.entries()) {
      st.length[r.slot]!++;
      const want = (await lastLogits(gpu, model, [[next[i]!]], { cache: alone[i]!.kv }))[0]!;
      assertClose(`step ${s}, slot ${r.slot}`, got.subarray(r.slot * config.vocabSize, (r.slot + 1) * config.vocabSize), want, TOL.f32);
    }
  }
  for (const a of alone) for (const t of [...a.kv.k, ...a.kv.v]) t.dispose();
  disposeSlotCache(sc);
  model.dispose();
});
