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
// retrieval: the bank's BM25 search (bank.ts); memories stay in an LRU cache as the bank stores
// them (neighbouring chunks often retrieve the same references). bf16 memories go to the GPU as
// stored, one upload per retrieval, and are widened and laid out behind the sink there
// (kernels/memsel/memory_front.ts); other dtypes, inspection and a server slot's front are built
// on the host.
//
// what each chunk retrieved is reported (onChunk, and in the result) for inspection; with
// `inspect`, also how much attention each retrieved reference received: the memory blocks'
// queries and attention logsumexps come back each step (logits' `watch`), and the weight of a
// query on a memory row is exp(scale q.k - lse), summed over the reference's rows.

import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { lastLogits, Lockstep, lockstepLength, type BatchGenerateOptions, type SampleOptions } from '../infer/generate.ts';
import type { Tensor } from '../gpu/tensor.ts';
import type { AttentionRows, KvCache, MemoryReads, Transformer } from '../model/transformer.ts';
import type { BankManifest, SearchHit, StoredReference } from './bank.ts';
import { bf16Kv, copyMemoryRows, decodeMemory, fmtShape, type MemoryCodebooks, type MemoryShape, type SparseMemory } from './blob.ts';
import { FRONT_NONE, memoryFront } from '../kernels/memsel/memory_front.ts';
import { REFERENCE_PREFIX, sinkKV } from './write.ts';

export interface ReadOptions {
  /** memories per chunk (default 5) */
  topk?: number;
  /** tokens per chunk (default 64) */
  chunk?: number;
  /** the position range the memories share (default 128: the references' maximum length) */
  memoryPositions?: number;
  /** memories kept in the cache, as the bank stores them (default 256) */
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
  watchMemory?: (layer: number, r: MemoryReads) => Promise<void>;
}

/** generateBatch's options: generateBatch's (infer/generate.ts), and what each row's chunks retrieved */
export interface MemoryBatchOptions extends BatchGenerateOptions {
  onChunk?: (row: number, c: ChunkInfo) => void;
  /** each step's Memory+ reads (Transformer.logits's watchMemory), e.g. to show which slots a token used */
  watchMemory?: (layer: number, r: MemoryReads) => Promise<void>;
}

/**
 * what the reader needs of a bank: its shape, a search and a load. MemoryBank (bank.ts, LanceDB on
 * disk) is one; a browser holds a small exported bank in memory instead (no LanceDB there)
 */
export interface MemorySource {
  readonly manifest: Pick<BankManifest, 'layers' | 'kvHeads' | 'tokens' | 'headDim'>;
  readonly codebooks: MemoryCodebooks | null;
  search(query: string, o: { k: number }): Promise<SearchHit[]>;
  get(ids: readonly string[]): Promise<StoredReference[]>;
}

/** a memory block's front rows built on the host, for every batch row: rows each, the sink's first */
type HostFront = { k: Float32Array; v: Float32Array; rows: number; sinkRows: number };

/** a least-recently-used map of memories as their bank stores them (blobs) */
class MemoryCache {
  private readonly map = new Map<string, Uint8Array>();
  hits = 0;
  misses = 0;
  constructor(private readonly size: number) {}

  /** the memories of ids, in order (answered from what this call found or loaded: later evictions cannot lose them) */
  async get(bank: MemorySource, ids: readonly string[]): Promise<Uint8Array[]> {
    const found = new Map<string, Uint8Array>();
    const missing: string[] = [];
    for (const id of new Set(ids)) {
      const m = this.map.get(id);
      if (!m) {
        missing.push(id);
        continue;
      }
      found.set(id, m);
      this.map.delete(id);
      this.map.set(id, m);
    }
    this.misses += missing.length;
    this.hits += found.size;
    if (missing.length > 0) {
      for (const r of await bank.get(missing)) {
        found.set(r.id, r.memory);
        this.put(r.id, r.memory);
      }
    }
    return ids.map((id) => {
      const m = found.get(id);
      if (!m) throw new EngramError(`memory reader: reference '${id}' was retrieved but is no longer in the bank`);
      return m;
    });
  }

  private put(id: string, m: Uint8Array): void {
    this.map.set(id, m);
    while (this.map.size > this.size) this.map.delete(this.map.keys().next().value!);
  }
}

/** generation with explicit memories from a bank: one sequence, or a lockstep batch of one length */
export class MemoryReader {
  private readonly memCache: MemoryCache;
  private readonly o: Required<Omit<ReadOptions, 'cacheSize'>>;
  private readonly layers: readonly number[];
  /** per memory block: its front's keys (batch x rows x kvHeads x headDim), rows per batch row and how many are the sink's, for inspection */
  private readonly inspected = new Map<number, { k: Float32Array; rows: number; sinkRows: number }>();
  /** per batch row, the chunk whose attention shares are being summed, and the sums */
  private acc: { info: ChunkInfo; sums: number[]; sink: number; n: number }[] | null = null;
  private sinkKv: Promise<{ k: Float32Array; v: Float32Array }[]> | null = null;

  constructor(
    private readonly gpu: Gpu,
    private readonly model: Transformer,
    private readonly tok: Tokenizer,
    private readonly bank: MemorySource,
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

  /** memory cache counters: memories reused and loaded */
  cacheStats(): { hits: number; misses: number } {
    return { hits: this.memCache.hits, misses: this.memCache.misses };
  }

  /** the prompt's continuation (new ids) and what every chunk retrieved */
  async generate(prompt: readonly number[], o: MemoryGenerateOptions): Promise<{ ids: number[]; chunks: ChunkInfo[] }> {
    if (prompt.length === 0) throw new EngramError('memory reader: the prompt needs at least one token');
    const { onToken, shouldStop, onChunk, ...rest } = o;
    const [r] = await this.generateBatch([prompt], {
      ...rest,
      ...(onToken ? { onToken: (_: number, id: number) => onToken(id) } : {}),
      ...(shouldStop ? { shouldStop: (_: number, ids: readonly number[]) => shouldStop(ids) } : {}),
      ...(onChunk ? { onChunk: (_: number, c: ChunkInfo) => onChunk(c) } : {}),
    });
    return r!;
  }

  /**
   * Continuations of prompts of one length decoded in lockstep (infer/generate.ts generateBatch:
   * one KV cache of their batch, row r sampling with seed + r, a stopped row stepping on with its
   * tokens dropped), each row retrieving with its own text. Every row's memory front has the
   * same rows (attention takes one prefix length for the batch): a row whose search found fewer
   * than topk references gets zero rows in the missing places (a zero key scores 0 and its zero
   * value adds nothing: the row's attention is diluted as if by one more key of score 0 per row).
   */
  async generateBatch(prompts: readonly (readonly number[])[], o: MemoryBatchOptions): Promise<{ ids: number[]; chunks: ChunkInfo[] }[]> {
    const { model, o: ro } = this;
    const c = model.config;
    if (prompts.length === 0) return [];
    const L = lockstepLength(prompts, 'memory reader');
    const max = Math.min(c.maxSeqLen, L + o.maxNew);
    const lock = new Lockstep(prompts, o);
    const { cache, last: first, chunks, sink } = await this.prefillRows(prompts, max, o);
    let last = first;
    try {
      let current = chunks.map((x) => x[x.length - 1]!);
      while (!lock.done && cache.length < max) {
        const next = lock.next(last);
        if (lock.done || cache.length >= max) break;
        // every `chunk` new tokens: memories retrieved with those tokens (rows in lockstep)
        const n = cache.length - L + 1;
        if (n % ro.chunk === 0) {
          const at = L + n;
          current = await this.retrieve(cache, sink, lock.out.map((x, r) => (lock.isLive(r) ? this.tok.decode(x.slice(-ro.chunk)) : '')), at, at, current);
          current.forEach((info, r) => {
            chunks[r]!.push(info);
            o.onChunk?.(r, info);
          });
        }
        for (const info of current) info.end = L + n + 1;
        last = await this.step(cache, next.map((id) => [id]), o.watchMemory);
      }
      this.settle();
      return lock.out.map((ids, r) => ({ ids, chunks: chunks[r]! }));
    } finally {
      for (const t of [...cache.k, ...cache.v]) t.dispose();
    }
  }

  /** tokens per chunk: memories are retrieved again after each chunk of new tokens */
  get chunkSize(): number {
    return this.o.chunk;
  }

  /** per block, the front rows the reader keeps: the sink's everywhere, and topk memories' at the memory blocks */
  frontRows(): number[] {
    const p = this.tok.encode(this.o.prefix).length;
    const rows = this.o.topk * this.bank.manifest.tokens;
    return Array.from({ length: this.model.config.layers }, (_, l) => p + (this.layers.includes(l) ? rows : 0));
  }

  /** the RoPE position of the context's first token (after the sink and the memories' shared range) */
  contextStart(): number {
    return this.tok.encode(this.o.prefix).length + this.o.memoryPositions;
  }

  /**
   * one prompt run chunk by chunk, each chunk attending to the memories its own text retrieved
   * (the prompt half of generate()): its cache (batch 1, room for `max` positions; the caller's to
   * dispose), the last position's logits, and what each chunk retrieved
   */
  async prefill(prompt: readonly number[], max: number, o: { onChunk?: (c: ChunkInfo) => void } = {}): Promise<{ cache: KvCache; logits: Float32Array; chunks: ChunkInfo[] }> {
    if (prompt.length === 0) throw new EngramError('memory reader: the prompt needs at least one token');
    const r = await this.prefillRows([prompt], max, o.onChunk ? { onChunk: (_: number, c: ChunkInfo) => o.onChunk!(c) } : {});
    return { cache: r.cache, logits: r.last[0]!, chunks: r.chunks[0]! };
  }

  /**
   * one row's memories retrieved with `query` (a row decoding on its own: serve/engine.ts), as the
   * memory blocks' front rows (the sink, then the memories; keys rotated), and what was retrieved
   */
  async frontFor(query: string, start: number): Promise<{ info: ChunkInfo; fronts: { layer: number; k: Float32Array; v: Float32Array }[] }> {
    const { infos, fronts } = await this.fronts(await this.sink(), [query], start, start, undefined, true);
    return { info: infos[0]!, fronts: [...fronts].map(([layer, f]) => ({ layer, k: f.k, v: f.v })) };
  }

  /**
   * the sink's keys and values per block, computed once per reader: a reader reads one model whose
   * weights do not change while it is in use (a server re-retrieving for each row every chunk)
   */
  private sink(): Promise<{ k: Float32Array; v: Float32Array }[]> {
    this.sinkKv ??= sinkKV(this.gpu, this.model, Array.from(this.tok.encode(this.o.prefix)));
    this.sinkKv.catch(() => (this.sinkKv = null));
    return this.sinkKv;
  }

  /** prompts of one length run chunk by chunk after the sink, each chunk with the memories its own text retrieved */
  private async prefillRows(
    prompts: readonly (readonly number[])[],
    max: number,
    o: { onChunk?: (row: number, c: ChunkInfo) => void; watchMemory?: (layer: number, r: MemoryReads) => Promise<void> },
  ): Promise<{ cache: KvCache; last: Float32Array[]; chunks: ChunkInfo[][]; sink: { k: Float32Array; v: Float32Array }[] }> {
    const { model, o: ro } = this;
    const c = model.config;
    const B = prompts.length;
    const L = lockstepLength(prompts, 'memory reader');
    if (L > max || max > c.maxSeqLen) throw new EngramError(`memory reader: a prompt of ${L} tokens passes maxSeqLen ${c.maxSeqLen}`);
    const cache = await model.createCache(max, { frontMax: this.frontRows(), pos0: this.contextStart(), batch: B });
    const chunks: ChunkInfo[][] = prompts.map(() => []);
    try {
      const sink = await this.sink();
      for (const [l, s] of sink.entries()) await model.setCacheFront(cache, l, repeat(s.k, B), repeat(s.v, B));
      let last: Float32Array[] = [];
      // each chunk's search and loads go while the chunk before it runs (the prompt's text is known)
      const chunkIds = (s: number) => prompts.map((pr) => pr.slice(s, s + ro.chunk));
      const fetch = (s: number) => {
        const f = this.fronts(sink, chunkIds(s).map((x) => this.tok.decode(x)), s, Math.min(L, s + ro.chunk));
        f.catch(() => undefined); // awaited below; a failure while the previous chunk runs is not unhandled
        return f;
      };
      let next = fetch(0);
      for (let s = 0; s < L; s += ro.chunk) {
        const fronts = await next;
        if (s + ro.chunk < L) next = fetch(s + ro.chunk);
        const infos = await this.apply(cache, fronts);
        infos.forEach((info, r) => {
          chunks[r]!.push(info);
          o.onChunk?.(r, info);
        });
        // only the last chunk's logits are read: the chunks before go to the GPU without a wait
        if (s + ro.chunk < L && !this.acc && !o.watchMemory) await this.advance(cache, chunkIds(s));
        else last = await this.step(cache, chunkIds(s), o.watchMemory);
      }
      return { cache, last, chunks, sink };
    } catch (e) {
      for (const t of [...cache.k, ...cache.v]) t.dispose();
      throw e;
    }
  }

  /**
   * retrieves memories with each row's query and puts them behind the sink in the memory blocks'
   * fronts; a row with an empty query keeps `keep`'s (its previous chunk's) references
   */
  private async retrieve(cache: KvCache, sink: { k: Float32Array; v: Float32Array }[], queries: string[], start: number, end: number, keep?: ChunkInfo[]): Promise<ChunkInfo[]> {
    return this.apply(cache, await this.fronts(sink, queries, start, end, keep));
  }

  /** puts fronts() into the cache's memory blocks (and starts inspecting the chunk) */
  private async apply(cache: KvCache, f: Awaited<ReturnType<MemoryReader['fronts']>>): Promise<ChunkInfo[]> {
    if (f.onGpu) {
      // the sink's rows stay where prefillRows wrote them; the memories' rows behind them are
      // widened from the upload on the GPU
      const { mem, idx, most, sinkRows } = f.onGpu;
      try {
        for (const [li, layer] of this.layers.entries()) {
          this.model.resizeCacheFront(cache, layer, sinkRows + most * this.bank.manifest.tokens);
          if (mem && idx) await memoryFront(this.gpu, { k: cache.k[layer]!, v: cache.v[layer]! }, { mem, idx }, { layer: li, row0: sinkRows });
        }
      } finally {
        mem?.dispose();
        idx?.dispose();
      }
    }
    for (const [layer, h] of f.fronts) {
      await this.model.setCacheFront(cache, layer, h.k, h.v);
      this.inspected.set(layer, h);
    }
    this.settle();
    if (this.o.inspect) this.acc = f.infos.map((info) => ({ info, sums: info.retrieved.map(() => 0), sink: 0, n: 0 }));
    return f.infos;
  }

  /**
   * each row's search (or `keep`'s references), loaded, as every memory block's front: the sink,
   * then the memories (rows of a batch padded to the most, with zero rows). bf16 memories go to
   * the GPU as stored (onGpu: widened and laid out there, apply()); `host` (a slot's front for the
   * server), inspection (which reads the keys on the host) and other dtypes build the rows here
   */
  private async fronts(sink: { k: Float32Array; v: Float32Array }[], queries: string[], start: number, end: number, keep?: ChunkInfo[], host = false) {
    const { topk } = this.o;
    const hits = await Promise.all(queries.map(async (q, r) => (q.trim() ? await this.bank.search(q, { k: topk }) : (keep?.[r]?.retrieved ?? []))));
    // one load for every row's references (rows share many)
    const ids = [...new Set(hits.flat().map((h) => h.id))];
    const blobs = new Map(ids.map((id, i) => [id, i]));
    const loaded = await this.memCache.get(this.bank, ids);
    const rows = hits.map((h) => h.map((x) => blobs.get(x.id)!)); // each row's memories, as indices into loaded
    const sinkRows = sink[this.layers[0]!]!.k.length / (this.bank.manifest.kvHeads * this.bank.manifest.headDim);
    const infos = queries.map((query, r) => ({ start, end, query: query.trim() ? query : '', retrieved: hits[r]! }));
    const stored = host || this.o.inspect ? null : loaded.map((b, i) => bf16Kv(b, `memory of reference '${ids[i]}'`));
    if (stored && stored.every((x) => x !== null)) return { infos, fronts: new Map<number, HostFront>(), onGpu: await this.upload(stored, rows, ids, sinkRows) };
    const decoded = loaded.map((b, i) => decodeMemory(b, `memory of reference '${ids[i]}'`, this.bank.codebooks ?? undefined));
    return { infos, fronts: this.hostFronts(sink, rows.map((r) => r.map((i) => decoded[i]!)), sinkRows), onGpu: null };
  }

  /** the loaded bf16 memories in one upload, and which of them fills each row's slots (onGpu of fronts()) */
  private async upload(stored: readonly { header: MemoryShape; kv: Uint8Array }[], rows: readonly number[][], ids: readonly string[], sinkRows: number) {
    const { kvHeads: Hkv, tokens: K, headDim: HS } = this.bank.manifest;
    const L = this.layers.length;
    stored.forEach(({ header: h }, i) => {
      if (h.layers !== L || h.kvHeads !== Hkv || h.tokens !== K || h.headDim !== HS) {
        throw new EngramError(`memory reader: reference '${ids[i]}' has a memory of ${fmtShape(h)} in a bank of ${fmtShape({ ...h, layers: L, kvHeads: Hkv, tokens: K, headDim: HS })}: the bank is damaged`);
      }
    });
    const most = Math.max(...rows.map((r) => r.length));
    if (stored.length === 0) return { mem: null, idx: null, most: 0, sinkRows };
    const idx = new Uint32Array(rows.length * most).fill(FRONT_NONE);
    rows.forEach((r, b) => idx.set(r, b * most));
    const per = stored[0]!.kv.byteLength;
    const bytes = new Uint8Array(stored.length * per);
    stored.forEach((x, i) => bytes.set(x.kv, i * per));
    const mem = await this.gpu.tensor([stored.length, L, 2, Hkv, K, HS], 'bf16', 'memory_front_upload');
    this.gpu.writeBytes(mem, bytes);
    return { mem, idx: await this.gpu.tensorFrom(idx, [rows.length, most], 'u32', 'memory_front_idx'), most, sinkRows };
  }

  /** per memory block, every row's front built on the host: the sink, then its memories (fronts()) */
  private hostFronts(sink: { k: Float32Array; v: Float32Array }[], mems: readonly SparseMemory[][], sinkRows: number) {
    const { kvHeads: Hkv, tokens: K, headDim: HS } = this.bank.manifest;
    const width = Hkv * HS;
    const rows = sinkRows + Math.max(...mems.map((m) => m.length)) * K;
    const fronts = new Map<number, HostFront>();
    for (const [li, layer] of this.layers.entries()) {
      const s = sink[layer]!;
      const k = new Float32Array(mems.length * rows * width);
      const v = new Float32Array(mems.length * rows * width);
      mems.forEach((ms, r) => {
        k.set(s.k, r * rows * width);
        v.set(s.v, r * rows * width);
        ms.forEach((m, i) => copyMemoryRows(m, li, k, v, r * rows + sinkRows + i * K));
      });
      fronts.set(layer, { k, v, rows, sinkRows });
    }
    return fronts;
  }

  /** closes the chunks being inspected: their sums become mean shares */
  private settle(): void {
    for (const a of this.acc ?? []) {
      a.info.attention = a.sums.map((x) => (a.n > 0 ? x / a.n : 0));
      a.info.sinkAttention = a.n > 0 ? a.sink / a.n : 0;
    }
    this.acc = null;
  }

  /** adds one memory block's attention weights on its front rows (exp(scale q.k - lse)) to each row's chunk sums */
  private async inspect(layer: number, q: Tensor, lse: Tensor): Promise<void> {
    const f = this.inspected.get(layer);
    if (!this.acc || !f) return;
    const c = this.model.config;
    const { heads: NH, kvHeads: NKV } = c;
    const HS = c.dim / NH;
    const K = this.bank.manifest.tokens;
    const qs = (await this.gpu.read(q)) as Float32Array;
    const ls = (await this.gpu.read(lse)) as Float32Array;
    const T = q.shape[1]!;
    const scale = 1 / Math.sqrt(HS);
    for (const [b, a] of this.acc.entries()) {
      const weight = (t: number, h: number, row: number) => {
        const g = Math.floor(h / (NH / NKV));
        let dot = 0;
        for (let x = 0; x < HS; x++) dot += qs[((b * T + t) * NH + h) * HS + x]! * f.k[((b * f.rows + row) * NKV + g) * HS + x]!;
        return Math.exp(scale * dot - ls[(b * NH + h) * T + t]!);
      };
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < NH; h++) {
          for (let row = 0; row < f.sinkRows; row++) a.sink += weight(t, h, row);
          for (let m = 0; m < a.sums.length; m++) for (let j = 0; j < K; j++) a.sums[m]! += weight(t, h, f.sinkRows + m * K + j);
          a.n++;
        }
      }
    }
  }

  /** runs rows of ids of one length after the cache, reading nothing back */
  private async advance(cache: KvCache, ids: readonly (readonly number[])[]): Promise<void> {
    const t = await this.gpu.tensorFrom(Uint32Array.from(ids.flat()), [ids.length, ids[0]!.length], 'u32', 'ids');
    try {
      (await this.model.logits(t, cache)).dispose();
    } finally {
      t.dispose();
    }
  }

  /** runs each row's ids after the cache; each row's last position's logits (inspected when a chunk is) */
  private step(cache: KvCache, ids: readonly (readonly number[])[], watchMemory?: (layer: number, r: MemoryReads) => Promise<void>): Promise<Float32Array[]> {
    return lastLogits(this.gpu, this.model, ids, { cache, ...(this.acc ? { watch: (layer: number, r: AttentionRows) => this.inspect(layer, r.q, r.lse) } : {}), ...(watchMemory ? { watchMemory } : {}) });
  }
}

/** n copies of a, one after another */
function repeat(a: Float32Array, n: number): Float32Array {
  const r = new Float32Array(a.length * n);
  for (let i = 0; i < n; i++) r.set(a, i * a.length);
  return r;
}
