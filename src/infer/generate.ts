// text generation: a prompt through the model once, then one token at a time against the KV
// cache (Transformer.logits with a cache), sampling on the host from the last position's logits.
//
// sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / T)
// restricted to the topK most likely tokens and then to the smallest set whose probability
// reaches topP (nucleus), renormalised, drawn with a seeded generator.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Transformer } from '../model/transformer.ts';

export interface SampleOptions {
  /** 0: greedy; default 1 */
  temperature?: number;
  /** keep the k most likely tokens (0 or absent: all) */
  topK?: number;
  /** keep the smallest set of tokens whose probability reaches p (default 1: all) */
  topP?: number;
  seed?: number;
}

export interface GenerateOptions extends SampleOptions {
  /** new tokens at most */
  maxNew: number;
  /** stop after producing any of these ids (it is included in the result) */
  stopIds?: readonly number[];
  /** called with each new token as soon as it is chosen (streaming) */
  onToken?: (id: number) => void;
  /** polled after each new token with everything generated so far: true stops (e.g. a stop string appeared) */
  shouldStop?: (ids: readonly number[]) => boolean;
}

/** a small seeded generator (mulberry32) for sampling */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One token id from logits (V) under the options. */
export function sample(logits: ArrayLike<number>, o: SampleOptions, random: () => number): number {
  const { temperature = 1, topK = 0, topP = 1 } = o;
  if (!(temperature >= 0) || !(topP > 0 && topP <= 1) || !(topK >= 0)) {
    throw new EngramError(`sample: temperature ${temperature} (>= 0), topP ${topP} (in (0, 1]) and topK ${topK} (>= 0) out of range`);
  }
  const V = logits.length;
  if (temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b);
  const keep = order.slice(0, topK > 0 ? Math.min(topK, V) : V);
  const m = logits[keep[0]!]!;
  const p = keep.map((i) => Math.exp((logits[i]! - m) / temperature));
  const total = p.reduce((a, b) => a + b, 0);
  let cut = keep.length;
  let acc = 0;
  for (let j = 0; j < keep.length; j++) {
    acc += p[j]! / total;
    if (acc >= topP) {
      cut = j + 1;
      break;
    }
  }
  const mass = p.slice(0, cut).reduce((a, b) => a + b, 0);
  let r = random() * mass;
  for (let j = 0; j < cut; j++) {
    r -= p[j]!;
    if (r <= 0) return keep[j]!;
  }
  return keep[cut - 1]!;
}

/** The prompt's continuation: up to maxNew new token ids (the prompt not included). */
export async function generate(gpu: Gpu, model: Transformer, prompt: readonly number[], o: GenerateOptions): Promise<number[]> {
  if (prompt.length === 0) throw new EngramError('generate: the prompt needs at least one token');
  const max = Math.min(model.config.maxSeqLen, prompt.length + o.maxNew);
  const cache = await model.createCache(max);
  const random = rng(o.seed ?? 0);
  const out: number[] = [];
  try {
    let next: readonly number[] = prompt;
    while (out.length < o.maxNew && cache.length + next.length <= max) {
      const ids = await gpu.tensorFrom(next, [1, next.length], 'u32', 'ids');
      const logits = await model.logits(ids, cache);
      const V = model.config.vocabSize;
      // only the last position's row comes back
      const last = new Float32Array(await gpu.readBytes(logits.buffer, logits.offset + (next.length - 1) * V * 4, V * 4));
      ids.dispose();
      logits.dispose();
      const id = sample(last, o, random);
      out.push(id);
      o.onToken?.(id);
      if (o.stopIds?.includes(id) || o.shouldStop?.(out)) break;
      next = [id];
    }
  } finally {
    for (const t of [...cache.k, ...cache.v]) t.dispose();
  }
  return out;
}
