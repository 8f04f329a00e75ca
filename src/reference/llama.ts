// the Llama-style decoder with Memory+ layers (model/transformer.ts) in float64, composed from the
// other references: forward to the mean cross-entropy, and the gradient of every parameter.
// parameters by their Hugging Face names (Float64Array each); memory blocks' parameters as
// pkm.ts takes them, under `model.layers.{i}.memory.{Wq,bq,keys,Ws,bs,Wo,bo}`, and the shared
// table as `memory.values`.

import { attentionBackward, attentionForward } from './attention.ts';
import { embeddingBackward, embeddingForward } from './embedding.ts';
import { linearBackward, linearForward } from './matmul.ts';
import { pkmBackward, pkmForward, type PkmCache, type PkmShape } from './pkm.ts';
import { rmsnormBackward, rmsnormForward } from './rmsnorm.ts';
import { ropeBackward, ropeForward } from './rope.ts';
import { fuse, split, swigluBackward, swigluForward } from './swiglu.ts';
import { xentBackward, xentForward } from './xent.ts';

export interface LlamaRefConfig {
  vocabSize: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffnHidden: number;
  ropeTheta: number;
  normEps: number;
  tiedEmbeddings: boolean;
  /** memory blocks and the layer shape (d = dim) */
  memory: { layers: number[]; shape: PkmShape } | null;
}

export type Weights = Record<string, Float64Array>;

const add = (a: ArrayLike<number>, b: ArrayLike<number>) => Float64Array.from(a, (x, i) => x + b[i]!);
const acc = (g: Weights, name: string, d: ArrayLike<number>) => {
  const t = g[name];
  g[name] = t ? add(t, d) : Float64Array.from(d);
};

/** loss and gradients of mean cross-entropy of ids (B, T) against targets (B, T) */
export function llamaLossAndGrads(W: Weights, c: LlamaRefConfig, ids: ArrayLike<number>, targets: ArrayLike<number>, B: number, T: number): { loss: number; grads: Weights } {
  const { vocabSize: V, dim: d, heads: NH, kvHeads: NKV, ffnHidden: F } = c;
  const HS = d / NH;
  const N = B * T;
  const rope = { B, T, HS, base: c.ropeTheta };
  const attDims = { B, T, NH, NKV, HS, P: 0 };
  const mem = (i: number) => c.memory !== null && c.memory.layers.includes(i);
  const memW = (i: number) => {
    const at = `model.layers.${i}.memory`;
    return { Wq: W[`${at}.Wq`]!, bq: W[`${at}.bq`]!, keys: W[`${at}.keys`]!, values: W['memory.values']!, Ws: W[`${at}.Ws`]!, bs: W[`${at}.bs`]!, Wo: W[`${at}.Wo`]!, bo: W[`${at}.bo`]! };
  };
  // forward
  let h = embeddingForward(W['model.embed_tokens.weight']!, ids, V, d);
  const saved = [];
  for (let i = 0; i < c.layers; i++) {
    const at = `model.layers.${i}`;
    const n1 = rmsnormForward(h, W[`${at}.input_layernorm.weight`]!, N, d, c.normEps);
    const qp = linearForward(n1.out, W[`${at}.self_attn.q_proj.weight`]!, null, N, NH * HS, d);
    const kp = linearForward(n1.out, W[`${at}.self_attn.k_proj.weight`]!, null, N, NKV * HS, d);
    const v = linearForward(n1.out, W[`${at}.self_attn.v_proj.weight`]!, null, N, NKV * HS, d);
    const q = ropeForward(qp, { ...rope, NH });
    const k = ropeForward(kp, { ...rope, NH: NKV });
    const att = attentionForward(q, k, v, undefined, undefined, attDims);
    const h1 = add(h, linearForward(att.out, W[`${at}.self_attn.o_proj.weight`]!, null, N, d, NH * HS));
    const n2 = rmsnormForward(h1, W[`${at}.post_attention_layernorm.weight`]!, N, d, c.normEps);
    let f: Float64Array;
    let gu: Float64Array | null = null;
    let sw: Float64Array | null = null;
    let pc: PkmCache | null = null;
    if (mem(i)) {
      const r = pkmForward(n2.out, N, memW(i), c.memory!.shape);
      f = r.out;
      pc = r.cache;
    } else {
      const g = linearForward(n2.out, W[`${at}.mlp.gate_proj.weight`]!, null, N, F, d);
      const u = linearForward(n2.out, W[`${at}.mlp.up_proj.weight`]!, null, N, F, d);
      gu = fuse(g, u, N, F);
      sw = swigluForward(gu, N, F);
      f = linearForward(sw, W[`${at}.mlp.down_proj.weight`]!, null, N, d, F);
    }
    saved.push({ h, n1, q, k, v, att, h1, n2, gu, sw, pc });
    h = add(h1, f);
  }
  const nf = rmsnormForward(h, W['model.norm.weight']!, N, d, c.normEps);
  const headName = c.tiedEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const logits = linearForward(nf.out, W[headName]!, null, N, V, d);
  const xe = xentForward(logits, targets, N, V);
  // backward
  const grads: Weights = {};
  const { dlogits } = xentBackward(logits, targets, xe.lse, N, V);
  const lh = linearBackward(dlogits, nf.out, W[headName]!, N, V, d);
  acc(grads, headName, lh.dw);
  const rf = rmsnormBackward(lh.dx, h, W['model.norm.weight']!, nf.rstd, N, d);
  acc(grads, 'model.norm.weight', rf.dw);
  let dh = rf.dx;
  for (let i = c.layers - 1; i >= 0; i--) {
    const at = `model.layers.${i}`;
    const s = saved[i]!;
    let dn2: Float64Array;
    if (mem(i)) {
      const g = pkmBackward(dh, s.pc!, memW(i), c.memory!.shape);
      dn2 = g.dx;
      const m = `${at}.memory`;
      acc(grads, `${m}.Wq`, g.dWq);
      acc(grads, `${m}.bq`, g.dbq);
      acc(grads, `${m}.keys`, g.dkeys);
      acc(grads, 'memory.values', g.dvalues);
      if (g.dWs) {
        acc(grads, `${m}.Ws`, g.dWs);
        acc(grads, `${m}.bs`, g.dbs!);
        acc(grads, `${m}.Wo`, g.dWo!);
        acc(grads, `${m}.bo`, g.dbo!);
      }
    } else {
      const down = linearBackward(dh, s.sw!, W[`${at}.mlp.down_proj.weight`]!, N, d, F);
      acc(grads, `${at}.mlp.down_proj.weight`, down.dw);
      const { g: dg, u: du } = split(swigluBackward(down.dx, s.gu!, N, F), N, F);
      const gate = linearBackward(dg, s.n2.out, W[`${at}.mlp.gate_proj.weight`]!, N, F, d);
      const up = linearBackward(du, s.n2.out, W[`${at}.mlp.up_proj.weight`]!, N, F, d);
      acc(grads, `${at}.mlp.gate_proj.weight`, gate.dw);
      acc(grads, `${at}.mlp.up_proj.weight`, up.dw);
      dn2 = add(gate.dx, up.dx);
    }
    const r2 = rmsnormBackward(dn2, s.h1, W[`${at}.post_attention_layernorm.weight`]!, s.n2.rstd, N, d);
    acc(grads, `${at}.post_attention_layernorm.weight`, r2.dw);
    const dh1 = add(dh, r2.dx);
    const o = linearBackward(dh1, s.att.out, W[`${at}.self_attn.o_proj.weight`]!, N, d, NH * HS);
    acc(grads, `${at}.self_attn.o_proj.weight`, o.dw);
    const ab = attentionBackward(o.dx, s.q, s.k, s.v, undefined, undefined, s.att.out, s.att.lse, attDims);
    const dqp = ropeBackward(ab.dq, { ...rope, NH });
    const dkp = ropeBackward(ab.dk, { ...rope, NH: NKV });
    const lq = linearBackward(dqp, s.n1.out, W[`${at}.self_attn.q_proj.weight`]!, N, NH * HS, d);
    const lk = linearBackward(dkp, s.n1.out, W[`${at}.self_attn.k_proj.weight`]!, N, NKV * HS, d);
    const lv = linearBackward(ab.dv, s.n1.out, W[`${at}.self_attn.v_proj.weight`]!, N, NKV * HS, d);
    acc(grads, `${at}.self_attn.q_proj.weight`, lq.dw);
    acc(grads, `${at}.self_attn.k_proj.weight`, lk.dw);
    acc(grads, `${at}.self_attn.v_proj.weight`, lv.dw);
    const r1 = rmsnormBackward(add(add(lq.dx, lk.dx), lv.dx), s.h, W[`${at}.input_layernorm.weight`]!, s.n1.rstd, N, d);
    acc(grads, `${at}.input_layernorm.weight`, r1.dw);
    dh = add(dh1, r1.dx);
  }
  acc(grads, 'model.embed_tokens.weight', embeddingBackward(dh, ids, V, d));
  return { loss: xe.loss, grads };
}
