// text generation: a prompt through the model once, then one token at a time against the KV
// cache (Transformer.logits with a cache), sampling on the host from the last position's logits.
// generateBatch does this for prompts of one length in lockstep, one cache for their batch;
// generate() is its one-row case.
//
// greedyBatch: greedy continuations of many prompts at once (evaluation: ~1,000 short questions),
// without a KV cache. Each step runs the whole batch (B active rows, T = the longest row so far,
// shorter rows right-padded with token 0) through Transformer.logits and reads back, in one
// readback, only the logits row of each row's last real position. Causal attention keeps padding
// after a row's end from reaching that row's earlier positions, and every other op is per token,
// so each row's logits are its own. No cache because a batched cache decodes rows in lockstep
// (one length for all) and these rows grow at different lengths; recomputing the prefix costs O(T) more work per step, which is
// cheap for short prompts and answers, and one step per new token for the whole batch (instead
// of one per token per prompt) is what saves the time: per-step latency (submit + readback)
// dominates small-batch decoding. Rows that finished are dropped from later steps.
// The result equals generate()'s greedy output up to float differences between the cached and
// uncached paths (different kernel shapes sum in different orders): where two logits nearly tie,
// the chosen token, and so the rest of that row, can differ.
//
// sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / T)
// restricted to the topK most likely tokens and then to the smallest set whose probability
// reaches topP (nucleus), renormalised, drawn with a seeded generator; O(V) per draw unless topK
// or topP narrow it (sample()).

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { AttentionRows, KvCache, MemoryReads, Transformer } from '../model/transformer.ts';

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
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** the index of the largest logit, the lowest on ties (greedy decoding) */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

/**
 * One token id from logits (V) under the options. Without topK or topP the draw scans the ids in
 * order (O(V): what a server's rows pay each step); with them, the candidates in order of logit
 * (ties: the lower id first), only those that can be in the nucleus sorted (a token whose
 * probability is below (1 - topP) / 2V of the total cannot be, since all of them together hold
 * less than the 1 - topP left out).
 */
export function sample(logits: ArrayLike<number>, o: SampleOptions, random: () => number): number {
  const { temperature = 1, topK = 0, topP = 1 } = o;
  if (!(temperature >= 0) || !(topP > 0 && topP <= 1) || !(topK >= 0)) {
    throw new EngramError(`sample: temperature ${temperature} (>= 0), topP ${topP} (in (0, 1]) and topK ${topK} (>= 0) out of range`);
  }
  const V = logits.length;
  if (temperature === 0) return argmax(logits);
  const byLogit = (a: number, b: number) => logits[b]! - logits[a]! || a - b;
  // the candidates: the topK most likely ids, or every id in id order (ids null)
  const ids = topK > 0 && topK < V ? Array.from({ length: V }, (_, i) => i).sort(byLogit).slice(0, topK) : null;
  const n = ids ? ids.length : V;
  const id = (j: number) => (ids ? ids[j]! : j);
  let m = -Infinity;
  for (let j = 0; j < n; j++) m = Math.max(m, logits[id(j)]!);
  const p = new Float64Array(n);
  let total = 0;
  for (let j = 0; j < n; j++) total += p[j] = Math.exp((logits[id(j)]! - m) / temperature);
  // the draw's pool (candidate indices j; null: all n) and its mass
  let pool: number[] | null = null;
  let mass = total;
  if (topP < 1) {
    // the nucleus: the most likely candidates until their share reaches topP
    const floor = ((1 - topP) * total) / (2 * n);
    const cand: number[] = [];
    for (let j = 0; j < n; j++) if (p[j]! >= floor) cand.push(j);
    cand.sort((a, b) => byLogit(id(a), id(b)));
    let acc = 0;
    let cut = cand.length;
    for (let j = 0; j < cand.length; j++) {
      acc += p[cand[j]!]! / total;
      if (acc >= topP) {
        cut = j + 1;
        break;
      }
    }
    pool = cand.slice(0, cut);
    mass = pool.reduce((a, j) => a + p[j]!, 0);
  }
  const count = pool ? pool.length : n;
  const at = (x: number) => (pool ? pool[x]! : x);
  let r = random() * mass;
  for (let x = 0; x < count; x++) {
    r -= p[at(x)]!;
    if (r <= 0) return id(at(x));
  }
  return id(at(count - 1));
}

/** The prompt's continuation: up to maxNew new token ids (the prompt not included). */
export async function generate(gpu: Gpu, model: Transformer, prompt: readonly number[], o: GenerateOptions): Promise<number[]> {
  if (prompt.length === 0) throw new EngramError('generate: the prompt needs at least one token');
  const { onToken, shouldStop, ...rest } = o;
  const [out] = await generateBatch(gpu, model, [prompt], {
    ...rest,
    ...(onToken ? { onToken: (_: number, id: number) => onToken(id) } : {}),
    ...(shouldStop ? { shouldStop: (_: number, ids: readonly number[]) => shouldStop(ids) } : {}),
  });
  return out!;
}

export interface BatchGenerateOptions extends SampleOptions {
  /** new tokens at most, per row */
  maxNew: number;
  /** a row stops after producing any of these ids (it is included in the row's result) */
  stopIds?: readonly number[];
  /** called with each row's new token as soon as it is chosen */
  onToken?: (row: number, id: number) => void;
  /** polled after each new token of a row with everything it generated so far: true stops the row */
  shouldStop?: (row: number, ids: readonly number[]) => boolean;
}

/**
 * Continuations of prompts of one length, decoded in lockstep against one KV cache of their
 * batch (Transformer.createCache batch): each step runs every row's last token and reads back
 * every row's logits in one readback. Row r samples with its own generator (seed + r: row 0 is
 * generate()'s). A row that stops keeps stepping with the others (its tokens are dropped) until
 * every row has stopped: the throughput setting of the paper's batch-32 measurements, not a
 * server's (rows of other lengths, joining and leaving, need a per-row key mask).
 */
export async function generateBatch(gpu: Gpu, model: Transformer, prompts: readonly (readonly number[])[], o: BatchGenerateOptions): Promise<number[][]> {
  if (prompts.length === 0) return [];
  const L = lockstepLength(prompts, 'generateBatch');
  const max = Math.min(model.config.maxSeqLen, L + o.maxNew);
  const cache = await model.createCache(max, { batch: prompts.length });
  const rows = new Lockstep(prompts, o);
  try {
    let next: readonly (readonly number[])[] = prompts;
    while (!rows.done && cache.length + next[0]!.length <= max) next = rows.next(await lastLogits(gpu, model, next, { cache })).map((id) => [id]);
  } finally {
    for (const t of [...cache.k, ...cache.v]) t.dispose();
  }
  return rows.out;
}

/** the one length of prompts decoded in lockstep; throws (naming `what`) for none, or for rows of other lengths */
export function lockstepLength(prompts: readonly (readonly number[])[], what: string): number {
  const L = prompts[0]?.length ?? 0;
  if (L === 0) throw new EngramError(`${what}: the prompts need at least one token`);
  const bad = prompts.findIndex((p) => p.length !== L);
  if (bad >= 0) throw new EngramError(`${what}: rows decode in lockstep, so every prompt needs the same length: prompt 0 has ${L} tokens, prompt ${bad} ${prompts[bad]!.length}`);
  return L;
}

/**
 * the rows of a lockstep decode: each row's output, generator (seed + r) and whether it still
 * takes tokens. next() picks every row's token from its last logits: a live row samples (and
 * stops after a stop id, when shouldStop says so, or at maxNew); a stopped row repeats its last
 * token, which is stepped with the others and dropped
 */
export class Lockstep {
  readonly out: number[][];
  private readonly live: boolean[];
  private readonly random: (() => number)[];

  constructor(
    private readonly prompts: readonly (readonly number[])[],
    private readonly o: BatchGenerateOptions,
  ) {
    this.out = prompts.map(() => []);
    this.live = prompts.map(() => o.maxNew > 0);
    this.random = prompts.map((_, r) => rng((o.seed ?? 0) + r));
  }

  /** every row has stopped */
  get done(): boolean {
    return !this.live.some((x) => x);
  }

  isLive(r: number): boolean {
    return this.live[r]!;
  }

  next(logits: readonly Float32Array[]): number[] {
    const { o, out } = this;
    return logits.map((l, r) => {
      if (!this.live[r]) return out[r]!.at(-1) ?? this.prompts[r]!.at(-1)!;
      const id = sample(l, o, this.random[r]!);
      out[r]!.push(id);
      o.onToken?.(r, id);
      if (o.stopIds?.includes(id) || o.shouldStop?.(r, out[r]!) || out[r]!.length >= o.maxNew) this.live[r] = false;
      return id;
    });
  }
}

/**
 * rows of ids (right-padded with token 0 to the longest) through model.logits, after `cache` when
 * given (then every row continues its cache row: one length for all); the logits of each row's
 * last real position, all in one readback. `watch` and `watchMemory` as Transformer.logits's
 */
export async function lastLogits(
  gpu: Gpu,
  model: Transformer,
  rows: readonly (readonly number[])[],
  o: { cache?: KvCache; watch?: (layer: number, t: AttentionRows) => Promise<void>; watchMemory?: (layer: number, r: MemoryReads) => Promise<void> } = {},
): Promise<Float32Array[]> {
  const V = model.config.vocabSize;
  const T = Math.max(...rows.map((r) => r.length));
  const flat = new Uint32Array(rows.length * T); // zeros: the padding
  rows.forEach((s, b) => flat.set(s, b * T));
  const ids = await gpu.tensorFrom(flat, [rows.length, T], 'u32', 'ids');
  try {
    const logits = await model.logits(ids, o.cache, o.watch, o.watchMemory);
    try {
      const back = await gpu.readRanges(logits.buffer, rows.map((s, b) => ({ offset: logits.offset + (b * T + s.length - 1) * V * 4, size: V * 4 })));
      return back.map((bytes) => new Float32Array(bytes));
    } finally {
      logits.dispose();
    }
  } finally {
    ids.dispose();
  }
}

export interface GreedyBatchOptions {
  /** new tokens at most, per prompt */
  maxNew: number;
  /** a row stops after producing any of these ids (it is included in the row's result) */
  stopIds?: readonly number[];
}

/** the largest logits tensor one batched step builds (B * T * V f32); more active rows than fit are run in groups */
const MAX_STEP_LOGITS_BYTES = 1 << 28;

/**
 * greedy continuations of several prompts at once (see the header): per prompt, up to maxNew new
 * token ids (the prompt not included), exactly as generate(..., { temperature: 0 }) would stop:
 * after a stop id, after maxNew tokens, or once the row's sequence would pass model.config.maxSeqLen.
 */
export async function greedyBatch(gpu: Gpu, model: Transformer, prompts: readonly (readonly number[])[], o: GreedyBatchOptions): Promise<number[][]> {
  const { maxSeqLen, vocabSize: V } = model.config;
  if (!(Number.isInteger(o.maxNew) && o.maxNew >= 0)) throw new EngramError(`greedyBatch: maxNew must be a non-negative integer, got ${o.maxNew}`);
  for (const [i, p] of prompts.entries()) {
    if (p.length === 0) throw new EngramError(`greedyBatch: prompt ${i} is empty; a prompt needs at least one token`);
    const bad = p.find((id) => !(Number.isInteger(id) && id >= 0 && id < V));
    if (bad !== undefined) throw new EngramError(`greedyBatch: prompt ${i} has token id ${bad}, outside the vocabulary [0, ${V})`);
  }
  const seqs = prompts.map((p) => [...p]);
  const out: number[][] = prompts.map(() => []);
  const stop = new Set(o.stopIds ?? []);
  // as in generate(): a row takes another step while it has tokens left and its sequence fits
  let active = seqs.map((_, r) => r).filter((r) => o.maxNew > 0 && seqs[r]!.length <= maxSeqLen);
  while (active.length > 0) {
    const T = Math.max(...active.map((r) => seqs[r]!.length));
    const per = Math.max(1, Math.floor(MAX_STEP_LOGITS_BYTES / (T * V * 4)));
    const next: number[] = [];
    for (let g = 0; g < active.length; g += per) next.push(...(await lastLogits(gpu, model, active.slice(g, g + per).map((r) => seqs[r]!))).map(argmax));
    const still: number[] = [];
    active.forEach((r, b) => {
      const id = next[b]!;
      out[r]!.push(id);
      seqs[r]!.push(id);
      if (!stop.has(id) && out[r]!.length < o.maxNew && seqs[r]!.length <= maxSeqLen) still.push(r);
    });
    active = still; // finished rows leave the batch
  }
  return out;
}
