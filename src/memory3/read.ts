// Memory³ reading (spec shared/specs/memory3.md §2): generation that retrieves explicit memories
// from a bank as it goes and attends to them at the memory layers.
//
// layout of what a token attends to, per block (the KV cache's front, then the context):
//   every block      the sink: the prefix ("Reference:") at positions 0..p-1, the same at every
//                    head of every layer (the spec's `<s>Reference:` constant sink)
//   memory blocks    then the retrieved memories: `topk` (5) memories x `tokens` (8) rows, each
//                    key rotated at its own position inside its reference (p..p+127: parallel
//                    position encoding, all memories share one range of `memoryPositions` = 128)
//   every block      then the context, from position p + memoryPositions on
// the spec's separator `<s>` between memories and context is not added: our models have no BOS;
// a context that should start with one starts with the model's end-of-text token (the caller's
// prompt). a memory's tokens differ per KV head (each head kept its own 8), so a front row holds,
// for head g, memory m's g-th selection: rows need not be the same token across heads.
//
// chunks of `chunk` (64) tokens: each prompt chunk retrieves `topk` memories with its own text
// and its tokens attend to those only (the prompt is run chunk by chunk, the front swapped in
// between). while generating, the first `chunk` new tokens keep the last prompt chunk's memories;
// after every `chunk` new tokens, the memories are retrieved again with those tokens' text.
// retrieval: the bank's BM25 search (bank.ts); decoded memories stay in an LRU cache (neighbouring
// chunks often retrieve the same references).
//
// what each chunk retrieved is reported (onChunk, and in the result) for inspection; with
// `inspect`, also how much attention each retrieved reference received: the memory blocks'
// queries and attention logsumexps come back each step (logits' `watch`), and the weight of a
// query on a memory row is exp(scale q.k - lse), summed over the reference's rows.

import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { rng, sample, type SampleOptions } from '../infer/generate.ts';
import type { Tensor } from '../gpu/tensor.ts';
import type { KvCache, Transformer } from '../model/transformer.ts';
import type { MemoryBank, SearchHit } from './bank.ts';
import { copyMemoryRows, decodeMemory, type SparseMemory } from './blob.ts';
import { REFERENCE_PREFIX, sinkKV } from './write.ts';

export interface ReadOptions {
  /** memories per chunk (default 5) */
  topk?: number;
  /** tokens per chunk (default 64) */
  chunk?: number;
  /** the position range the memories share (default 128: the references' maximum length) */
  memoryPositions?: number;
  /** decoded memories kept (default 256) */
  cacheSize?: number;
  prefix?: string;
  /** measure how much attention each retrieved reference receives (ChunkInfo.attention; costs a readback per block and step) */
  inspect?: boolean;
}

export interface ChunkInfo {
  /** the chunk's first and one-past-last token index in prompt + generated */
  start: number;
  end: number;
  /** the text the memories were retrieved with ('' when reused from the previous chunk) */
  query: string;
  retrieved: SearchHit[];
  /**
   * with `inspect`: per retrieved reference, the share of attention its memory rows received,
   * and the sink's, each a mean over the chunk's tokens, the query heads and the memory blocks
   * (the rest went to the context)
   */
  attention?: number[];
  sinkAttention?: number;
}

export interface MemoryGenerateOptions extends SampleOptions {
  maxNew: number;
  stopIds?: readonly number[];
  onToken?: (id: number) => void;
  /** polled after each new token with everything generated so far: true stops (e.g. a stop string appeared) */
  shouldStop?: (ids: readonly number[]) => boolean;
  onChunk?: (c: ChunkInfo) => void;
}

/** a least-recently-used map of decoded memories */
class MemoryCache {
  private readonly map = new Map<string, SparseMemory>();
  hits = 0;
  misses = 0;
  constructor(private readonly size: number) {}

  async get(bank: MemoryBank, ids: readonly string[]): Promise<SparseMemory[]> {
    const missing = ids.filter((id) => !this.map.has(id));
    this.misses += missing.length;
    this.hits += ids.length - missing.length;
    if (missing.length > 0) for (const r of await bank.get(missing)) this.put(r.id, decodeMemory(r.memory, `memory of reference '${r.id}'`));
    return ids.map((id) => {
      const m = this.map.get(id);
      if (!m) throw new EngramError(`memory reader: reference '${id}' was retrieved but is no longer in the bank`);
      this.map.delete(id);
      this.map.set(id, m);
      return m;
    });
  }

  private put(id: string, m: SparseMemory): void {
    this.map.set(id, m);
    while (this.map.size > this.size) this.map.delete(this.map.keys().next().value!);
  }
}

/** generation with explicit memories from a bank (one sequence) */
export class MemoryReader {
  private readonly memCache: MemoryCache;
  private readonly o: Required<Omit<ReadOptions, 'cacheSize'>>;
  private readonly layers: readonly number[];
  /** per memory block: its front's keys (rows x kvHeads x headDim) and how many rows are the sink's, for inspection */
  private readonly fronts = new Map<number, { k: Float32Array; sinkRows: number }>();
  /** the chunk whose attention shares are being summed, and the sums */
  private acc: { info: ChunkInfo; sums: number[]; sink: number; n: number } | null = null;

  constructor(
    private readonly gpu: Gpu,
    private readonly model: Transformer,
    private readonly tok: Tokenizer,
    private readonly bank: MemoryBank,
    o: ReadOptions = {},
  ) {
    const c = model.config;
    const m = bank.manifest;
    if (m.kvHeads !== c.kvHeads || m.headDim !== c.dim / c.heads || m.layers.some((l) => l >= c.layers)) {
      throw new EngramError(`memory reader: the bank holds memories of ${m.kvHeads} KV heads of dim ${m.headDim} at layers [${m.layers.join(', ')}]; this model has ${c.kvHeads} of dim ${c.dim / c.heads} in ${c.layers} blocks`);
    }
    this.layers = m.layers;
    this.o = { topk: o.topk ?? 5, chunk: o.chunk ?? 64, memoryPositions: o.memoryPositions ?? 128, prefix: o.prefix ?? REFERENCE_PREFIX, inspect: o.inspect ?? false };
    for (const k of ['topk', 'chunk', 'memoryPositions'] as const) {
      if (!(Number.isInteger(this.o[k]) && this.o[k] > 0)) throw new EngramError(`memory reader: ${k} must be a positive integer, got ${this.o[k]}`);
    }
    this.memCache = new MemoryCache(o.cacheSize ?? 256);
  }

  /** memory cache counters: decoded memories reused and loaded */
  cacheStats(): { hits: number; misses: number } {
    return { hits: this.memCache.hits, misses: this.memCache.misses };
  }

  /** the prompt's continuation (new ids) and what every chunk retrieved */
  async generate(prompt: readonly number[], o: MemoryGenerateOptions): Promise<{ ids: number[]; chunks: ChunkInfo[] }> {
    const { model, o: ro } = this;
    const c = model.config;
    if (prompt.length === 0) throw new EngramError('memory reader: the prompt needs at least one token');
    const prefix = Array.from(this.tok.encode(ro.prefix));
    const p = prefix.length;
    const max = Math.min(c.maxSeqLen, prompt.length + o.maxNew);
    if (prompt.length > max) throw new EngramError(`memory reader: a prompt of ${prompt.length} tokens passes maxSeqLen ${c.maxSeqLen}`);
    const rows = ro.topk * this.bank.manifest.tokens;
    const cache = await model.createCache(max, {
      frontMax: Array.from({ length: c.layers }, (_, l) => p + (this.layers.includes(l) ? rows : 0)),
      pos0: p + ro.memoryPositions,
    });
    const chunks: ChunkInfo[] = [];
    try {
      const sink = await sinkKV(this.gpu, model, prefix);
      for (const [l, s] of sink.entries()) await model.setCacheFront(cache, l, s.k, s.v);
      let last: Float32Array | null = null;
      for (let s = 0; s < prompt.length; s += ro.chunk) {
        const ids = prompt.slice(s, s + ro.chunk);
        const info = await this.retrieve(cache, sink, this.tok.decode(ids), s, s + ids.length);
        chunks.push(info);
        o.onChunk?.(info);
        last = await this.step(cache, ids);
      }
      const random = rng(o.seed ?? 0);
      const out: number[] = [];
      let current = chunks[chunks.length - 1]!;
      while (out.length < o.maxNew && cache.length < max) {
        const id = sample(last!, o, random);
        out.push(id);
        o.onToken?.(id);
        if (o.stopIds?.includes(id) || o.shouldStop?.(out) || out.length >= o.maxNew || cache.length >= max) break;
        // every `chunk` new tokens: memories retrieved with those tokens
        if (out.length % ro.chunk === 0) {
          const at = prompt.length + out.length;
          current = await this.retrieve(cache, sink, this.tok.decode(out.slice(-ro.chunk)), at, at);
          chunks.push(current);
          o.onChunk?.(current);
        }
        current.end = prompt.length + out.length + 1;
        last = await this.step(cache, [id]);
      }
      this.settle();
      return { ids: out, chunks };
    } finally {
      for (const t of [...cache.k, ...cache.v]) t.dispose();
    }
  }

  /** retrieves memories with `query` and puts them behind the sink in the memory blocks' fronts */
  private async retrieve(cache: KvCache, sink: { k: Float32Array; v: Float32Array }[], query: string, start: number, end: number): Promise<ChunkInfo> {
    const hits = query.trim() ? await this.bank.search(query, { k: this.o.topk }) : [];
    const mems = await this.memCache.get(this.bank, hits.map((h) => h.id));
    const { kvHeads: Hkv, tokens: K, headDim: HS } = this.bank.manifest;
    for (const [li, layer] of this.layers.entries()) {
      const s = sink[layer]!;
      const sinkRows = s.k.length / (Hkv * HS);
      const rows = sinkRows + mems.length * K;
      const k = new Float32Array(rows * Hkv * HS);
      const v = new Float32Array(rows * Hkv * HS);
      k.set(s.k);
      v.set(s.v);
      mems.forEach((m, i) => copyMemoryRows(m, li, k, v, sinkRows + i * K));
      await this.model.setCacheFront(cache, layer, k, v);
      this.fronts.set(layer, { k, sinkRows });
    }
    const info: ChunkInfo = { start, end, query, retrieved: hits };
    this.settle();
    if (this.o.inspect) this.acc = { info, sums: hits.map(() => 0), sink: 0, n: 0 };
    return info;
  }

  /** closes the chunk being inspected: its sums become mean shares */
  private settle(): void {
    const a = this.acc;
    if (!a) return;
    a.info.attention = a.sums.map((x) => (a.n > 0 ? x / a.n : 0));
    a.info.sinkAttention = a.n > 0 ? a.sink / a.n : 0;
    this.acc = null;
  }

  /** adds one memory block's attention weights on its front rows (exp(scale q.k - lse)) to the chunk's sums */
  private async inspect(layer: number, q: Tensor, lse: Tensor): Promise<void> {
    const a = this.acc;
    const f = this.fronts.get(layer);
    if (!a || !f) return;
    const c = this.model.config;
    const { heads: NH, kvHeads: NKV } = c;
    const HS = c.dim / NH;
    const K = this.bank.manifest.tokens;
    const qs = (await this.gpu.read(q)) as Float32Array;
    const ls = (await this.gpu.read(lse)) as Float32Array;
    const T = q.shape[1]!;
    const scale = 1 / Math.sqrt(HS);
    const weight = (t: number, h: number, row: number) => {
      const g = Math.floor(h / (NH / NKV));
      let dot = 0;
      for (let x = 0; x < HS; x++) dot += qs[(t * NH + h) * HS + x]! * f.k[(row * NKV + g) * HS + x]!;
      return Math.exp(scale * dot - ls[h * T + t]!);
    };
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < NH; h++) {
        for (let row = 0; row < f.sinkRows; row++) a.sink += weight(t, h, row);
        for (let m = 0; m < a.sums.length; m++) for (let j = 0; j < K; j++) a.sums[m]! += weight(t, h, f.sinkRows + m * K + j);
        a.n++;
      }
    }
  }

  /** runs ids after the cache; the last position's logits */
  private async step(cache: KvCache, ids: readonly number[]): Promise<Float32Array> {
    const t = await this.gpu.tensorFrom(ids, [1, ids.length], 'u32', 'ids');
    try {
      const logits = await this.model.logits(t, cache, this.acc ? (layer, r) => this.inspect(layer, r.q, r.lse) : undefined);
      const V = this.model.config.vocabSize;
      const last = new Float32Array(await this.gpu.readBytes(logits.buffer, logits.offset + (ids.length - 1) * V * 4, V * 4));
      logits.dispose();
      return last;
    } finally {
      t.dispose();
    }
  }
}
