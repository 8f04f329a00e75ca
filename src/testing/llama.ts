// a tiny Llama-with-memory config and seeded weights for the model's tests (reference/llama.ts names).

import { parseModelConfig, type ModelConfig } from '../model/config.ts';
import type { LlamaRefConfig, Weights } from '../reference/llama.ts';
import { Rng } from './rng.ts';

/** a tiny trainable model (vocabulary 32, width 16, 2 blocks) with Memory+ at `layers` (8^2 value rows) */
export function tinyMemoryModel(layers: number[], valueDtype: 'f32' | 'bf16' = 'f32'): ModelConfig {
  return parseModelConfig({ vocabSize: 32, dim: 16, layers: 2, heads: 2, ffnHidden: 32, maxSeqLen: 16, memory: { layers, nKeys: 8, heads: 2, topk: 4, keyDim: 8, valueDtype } });
}

/** a tiny model: 2 blocks, GQA (2 heads on 1 kv head), block 1's FFN a Memory+ layer */
export const TINY: LlamaRefConfig = {
  vocabSize: 11,
  dim: 8,
  layers: 2,
  heads: 2,
  kvHeads: 1,
  ffnHidden: 12,
  ropeTheta: 10000,
  normEps: 1e-5,
  tiedEmbeddings: false,
  memory: { layers: [1], shape: { d: 8, H: 2, n: 3, k: 2, dk: 4, gated: true } },
};

export function tinyWeights(c: LlamaRefConfig, seed: number): Weights {
  const rng = new Rng(seed);
  const { vocabSize: V, dim: d, heads: NH, kvHeads: NKV, ffnHidden: F } = c;
  const HS = d / NH;
  const W: Weights = { 'model.embed_tokens.weight': rng.normals(V * d, 0.5), 'model.norm.weight': rng.normals(d, 0.2, 1) };
  if (!c.tiedEmbeddings) W['lm_head.weight'] = rng.normals(V * d, 0.5);
  for (let i = 0; i < c.layers; i++) {
    const at = `model.layers.${i}`;
    W[`${at}.input_layernorm.weight`] = rng.normals(d, 0.2, 1);
    W[`${at}.post_attention_layernorm.weight`] = rng.normals(d, 0.2, 1);
    W[`${at}.self_attn.q_proj.weight`] = rng.normals(NH * HS * d, 0.5);
    W[`${at}.self_attn.k_proj.weight`] = rng.normals(NKV * HS * d, 0.5);
    W[`${at}.self_attn.v_proj.weight`] = rng.normals(NKV * HS * d, 0.5);
    W[`${at}.self_attn.o_proj.weight`] = rng.normals(d * NH * HS, 0.5);
    if (c.memory?.layers.includes(i)) {
      const { H, n, dk } = c.memory.shape;
      const m = `${at}.memory`;
      Object.assign(W, {
        [`${m}.Wq`]: rng.normals(H * dk * d, 0.5),
        [`${m}.bq`]: rng.normals(H * dk, 0.1),
        [`${m}.keys`]: rng.normals(2 * H * n * (dk / 2)),
        [`${m}.Ws`]: rng.normals(d * d, 0.5),
        [`${m}.bs`]: rng.normals(d, 0.1),
        [`${m}.Wo`]: rng.normals(d * d, 0.5),
        [`${m}.bo`]: rng.normals(d, 0.1),
      });
      W['memory.values'] = rng.normals(n * n * d);
    } else {
      W[`${at}.mlp.gate_proj.weight`] = rng.normals(F * d, 0.5);
      W[`${at}.mlp.up_proj.weight`] = rng.normals(F * d, 0.5);
      W[`${at}.mlp.down_proj.weight`] = rng.normals(d * F, 0.5);
    }
  }
  return W;
}

