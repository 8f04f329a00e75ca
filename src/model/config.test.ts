import assert from 'node:assert/strict';
import { test } from 'node:test';
import { centredLayers, denseConfig, ModelConfigError, parseModelConfig } from './config.ts';

const base = { vocabSize: 512, dim: 64, layers: 24, heads: 4, ffnHidden: 172, maxSeqLen: 256 };

test('model config: defaults, the paper placement (24 layers, 3 at stride 8 -> 4, 12, 20)', () => {
  assert.deepEqual(centredLayers(24, 3, 8), [4, 12, 20]);
  const c = parseModelConfig({ ...base, memory: { count: 3, stride: 8, nKeys: 16, topk: 4, keyDim: 32 } });
  assert.equal(c.kvHeads, 4);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.tiedEmbeddings, false);
  assert.deepEqual(c.memory?.layers, [4, 12, 20]);
  assert.equal(c.memory?.heads, 4);
  assert.equal(c.memory?.gated, true);
  assert.equal(c.memory?.valueDtype, 'bf16');
  assert.equal(parseModelConfig(base).memory, null);
});

test('model config: every impossible setting is named in one error', () => {
  assert.throws(
    () =>
      parseModelConfig({
        ...base,
        dim: 66,
        kvHeads: 3,
        layers: 2.5,
        colour: 'red',
        memory: { layers: [1, 1, 30], topk: 80, nKeys: 40, keyDim: 33, valueDtype: 'f64' },
      }),
    (e: Error) => {
      for (const want of [
        /layers: expected an integer >= 1, got 2.5/,
        /colour: unknown field/,
        /dim 66 must be a multiple of heads 4/,
        /heads 4 must be a multiple of kvHeads 3/,
        /memory.layers \[1,1,30\]: blocks 1, 1, 30 are outside 0..0/,
        /a block appears twice/,
        /memory.topk 80 exceeds memory.nKeys 40/,
        /memory.keyDim 33 must be even/,
        /memory.valueDtype: expected "f32", "f16" or "bf16", got "f64"/,
      ]) {
        assert.match(e.message, want);
      }
      return true;
    },
  );
  assert.throws(() => parseModelConfig([]), /expected a JSON object/);
  assert.throws(() => parseModelConfig({ ...base, dim: 60, heads: 4 }), /head dim 15 \(dim \/ heads\) must be even for RoPE/);
});

test('denseConfig: heads of headDim, a KV head per kvGroup, SwiGLU 8 dim / 3 rounded to ffnMultiple, tied embeddings', () => {
  const c = denseConfig({ vocabSize: 100, dim: 384, layers: 6, maxSeqLen: 256 });
  assert.deepEqual([c.heads, c.kvHeads, c.ffnHidden, c.tiedEmbeddings, c.memory], [6, 3, 1024, true, null]);
  const s = denseConfig({ vocabSize: 100, dim: 32, layers: 2, maxSeqLen: 64, headDim: 16, kvGroup: 4, ffnMultiple: 16 });
  assert.deepEqual([s.heads, s.kvHeads, s.ffnHidden], [2, 1, 80]);
  assert.throws(() => denseConfig({ vocabSize: 100, dim: 100, layers: 2, maxSeqLen: 64 }), ModelConfigError);
});
