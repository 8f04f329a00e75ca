// the decoding engine of a server: requests of any prompt length join one decoding batch as they
// come and leave when they finish (continuous batching), sharing the GPU step by step.
//
// one loop owns the GPU. each turn it admits waiting requests into free slots of a SlotCache
// (model/slot_cache.ts): a request's prompt runs alone (batch 1, the KvCache path; with memory,
// MemoryReader.prefill: chunk by chunk, each chunk reading the memories its own text retrieved),
// its first token is sampled from the prompt's last logits, and its cache rows move into the
// slot. then one step runs every active slot's last token (Transformer.decodeSlots: each row at
// its own length and position, attending to exactly its own rows), reads back the active rows'
// logits in one readback, and samples each row's next token with its own options and generator.
// a row finishes at a stop id, a stop string, max tokens, the end of its slot, or cancellation
// (its AbortSignal, e.g. the client went away); its slot is free at once.
// a memory row re-retrieves after every `chunk` (64) new tokens with those tokens' text
// (Memory³'s reading, memory3/read.ts) and its memory blocks' fronts are replaced in place.
//
// other GPU work (encoding a reference for a memory add) goes through exclusive(): it runs
// between steps, never inside one. close() stops taking requests, lets the running and waiting
// ones finish (or cancels them with `cancel`), then ends the loop.

import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { lastLogits, rng, sample, type SampleOptions } from '../infer/generate.ts';
import type { ChunkInfo, MemoryReader } from '../memory3/read.ts';
import { copyIntoSlot, createSlotCache, disposeSlotCache, setSlotFront, slotState, writeSlotStep, type SlotCache, type SlotState } from '../model/slot_cache.ts';
import type { KvCache, Transformer } from '../model/transformer.ts';

export interface EngineRequest extends SampleOptions {
  /** prompt token ids (at least one) */
  prompt: readonly number[];
  /** new tokens at most */
  maxNew: number;
  stopIds?: readonly number[];
  /** stop strings: the row ends once its text contains one (the text is cut before it: EngineResult.text) */
  stop?: readonly string[];
  /** read explicit memories (the engine needs a reader) */
  memory?: boolean;
  signal?: AbortSignal;
  /** each new token, as it is chosen */
  onToken?: (id: number) => void;
  /** each chunk's retrieval (memory rows) */
  onChunk?: (c: ChunkInfo) => void;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface EngineResult {
  ids: number[];
  /** the new tokens' text, cut before a stop string */
  text: string;
  finish: FinishReason;
  promptTokens: number;
  chunks: ChunkInfo[];
}

export interface EngineOptions {
  /** rows decoded together (default 32) */
  slots?: number;
  /** the explicit-memory reader (its bank and options, its chunk size too): requests may then ask for memory */
  reader?: MemoryReader;
}

export interface EngineStats {
  active: number;
  waiting: number;
  steps: number;
  tokens: number;
  requests: number;
  /** prompts run (admissions) */
  prefills: number;
  /** wall milliseconds in admissions (prompts run, first tokens) and in decoding steps */
  prefillMs: number;
  stepMs: number;
}

interface Row {
  req: EngineRequest;
  ids: number[];
  chunks: ChunkInfo[];
  random: () => number;
  resolve: (r: EngineResult) => void;
  reject: (e: unknown) => void;
  /** the token to run next */
  next: number;
}

export class Engine {
  private readonly waiting: Row[] = [];
  private readonly rows: (Row | null)[];
  private readonly st: SlotState;
  private closing = false;
  private wake: (() => void) | null = null;
  private readonly loop: Promise<void>;
  private gpuTurn: Promise<unknown> = Promise.resolve();
  private counts = { steps: 0, tokens: 0, requests: 0, prefills: 0, prefillMs: 0, stepMs: 0 };

  private constructor(
    private readonly gpu: Gpu,
    private readonly model: Transformer,
    private readonly tok: Tokenizer,
    private readonly cache: SlotCache,
    private readonly reader: MemoryReader | null,
    private readonly chunk: number,
  ) {
    this.rows = Array.from({ length: cache.slots }, () => null);
    this.st = slotState(cache);
    this.loop = this.run();
  }

  static async create(gpu: Gpu, model: Transformer, tok: Tokenizer, o: EngineOptions = {}): Promise<Engine> {
    const slots = o.slots ?? 32;
    const reader = o.reader ?? null;
    const cache = await createSlotCache(gpu, model.config, { slots, max: model.config.maxSeqLen, ...(reader ? { frontMax: reader.frontRows() } : {}) });
    return new Engine(gpu, model, tok, cache, reader, reader?.chunkSize ?? 64);
  }

  /** positions a request may fill (prompt + new tokens) */
  get maxContext(): number {
    return this.cache.max;
  }

  get hasMemory(): boolean {
    return this.reader !== null;
  }

  stats(): EngineStats {
    return { active: this.rows.filter((r) => r).length, waiting: this.waiting.length, ...this.counts };
  }

  /** the request's continuation, once it finishes */
  submit(req: EngineRequest): Promise<EngineResult> {
    if (this.closing) return Promise.reject(new EngramError('engine: shutting down, no new requests'));
    const V = this.model.config.vocabSize;
    if (req.prompt.length === 0) return Promise.reject(new EngramError('engine: the prompt needs at least one token'));
    if (req.prompt.some((id) => !(Number.isInteger(id) && id >= 0 && id < V))) return Promise.reject(new EngramError(`engine: a prompt token id is outside the vocabulary [0, ${V})`));
    if (req.prompt.length >= this.cache.max) return Promise.reject(new EngramError(`engine: a prompt of ${req.prompt.length} tokens leaves no room in a context of ${this.cache.max}`));
    if (!(Number.isInteger(req.maxNew) && req.maxNew >= 1)) return Promise.reject(new EngramError(`engine: maxNew must be a positive integer, got ${req.maxNew}`));
    if (req.memory && !this.reader) return Promise.reject(new EngramError('engine: memory was asked for, but the engine has no memory bank'));
    return new Promise((resolve, reject) => {
      this.waiting.push({ req, ids: [], chunks: [], random: rng(req.seed ?? 0), resolve, reject, next: 0 });
      this.counts.requests++;
      this.wake?.();
    });
  }

  /** runs fn with the GPU to itself, between decoding steps */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const turn = this.gpuTurn.then(fn);
    this.gpuTurn = turn.catch(() => undefined);
    return turn;
  }

  /** stops taking requests; waits for the running and waiting ones (or cancels them), then for the loop */
  async close(o: { cancel?: boolean } = {}): Promise<void> {
    this.closing = true;
    if (o.cancel) {
      for (const r of this.waiting.splice(0)) this.finish(r, 'cancelled');
      this.rows.forEach((r, s) => r && this.end(s, 'cancelled'));
    }
    this.wake?.();
    await this.loop;
    disposeSlotCache(this.cache);
  }

  private async run(): Promise<void> {
    for (;;) {
      if (this.waiting.length === 0 && !this.rows.some((r) => r)) {
        if (this.closing) return;
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      await this.exclusive(async () => {
        const t0 = performance.now();
        await this.admit();
        const t1 = performance.now();
        await this.step();
        this.counts.prefillMs += t1 - t0;
        this.counts.stepMs += performance.now() - t1;
      }).catch((e: unknown) => this.fail(e));
    }
  }

  /** a GPU failure ends every request with it (the engine goes on for new ones) */
  private fail(e: unknown): void {
    for (const r of this.waiting.splice(0)) r.reject(e);
    this.rows.forEach((r, s) => {
      if (!r) return;
      this.rows[s] = null;
      this.st.active[s] = false;
      r.reject(e);
    });
  }

  /** waiting requests into free slots: each prompt run alone, its first token sampled */
  private async admit(): Promise<void> {
    for (let s = 0; s < this.rows.length && this.waiting.length > 0; s++) {
      if (this.rows[s]) continue;
      const row = this.waiting.shift()!;
      if (row.req.signal?.aborted) {
        this.finish(row, 'cancelled');
        s--;
        continue;
      }
      const { req } = row;
      const room = Math.min(this.cache.max, req.prompt.length + req.maxNew);
      let kv: KvCache;
      let logits: Float32Array;
      try {
        if (req.memory) {
          const r = await this.reader!.prefill(req.prompt, room, req.onChunk ? { onChunk: req.onChunk } : {});
          kv = r.cache;
          logits = r.logits;
          row.chunks.push(...r.chunks);
        } else {
          kv = await this.model.createCache(room, { batch: 1 });
          logits = (await lastLogits(this.gpu, this.model, [req.prompt], { cache: kv }))[0]!;
        }
      } catch (e) {
        row.reject(e);
        s--;
        continue;
      }
      try {
        copyIntoSlot(this.gpu, kv, this.cache, this.st, s);
      } finally {
        for (const t of [...kv.k, ...kv.v]) t.dispose();
      }
      this.rows[s] = row;
      this.counts.prefills++;
      this.take(s, logits);
    }
  }

  /** one token for every active slot */
  private async step(): Promise<void> {
    const live = this.rows.flatMap((r, s) => (r ? [s] : []));
    if (live.length === 0) return;
    // memory rows at a chunk's end retrieve again with its tokens
    for (const s of live) {
      const row = this.rows[s]!;
      if (!row.req.memory || row.ids.length === 0 || row.ids.length % this.chunk !== 0) continue;
      const at = row.req.prompt.length + row.ids.length;
      const { info, fronts } = await this.reader!.frontFor(this.tok.decode(row.ids.slice(-this.chunk)), at);
      for (const f of fronts) setSlotFront(this.gpu, this.cache, this.st, f.layer, s, f.k, f.v);
      row.chunks.push(info);
      row.req.onChunk?.(info);
    }
    const B = live[live.length - 1]! + 1;
    const ids = new Uint32Array(B);
    for (const s of live) ids[s] = this.rows[s]!.next;
    writeSlotStep(this.gpu, this.cache, this.st);
    const t = await this.gpu.tensorFrom(ids, [B, 1], 'u32', 'ids');
    try {
      const logits = await this.model.decodeSlots(t, this.cache);
      try {
        const V = this.model.config.vocabSize;
        const back = await this.gpu.readRanges(logits.buffer, live.map((s) => ({ offset: logits.offset + s * V * 4, size: V * 4 })));
        this.counts.steps++;
        live.forEach((s, i) => {
          this.st.length[s]!++;
          this.take(s, new Float32Array(back[i]!));
        });
      } finally {
        logits.dispose();
      }
    } finally {
      t.dispose();
    }
  }

  /** samples slot s's next token from its logits and ends the row when it is done */
  private take(s: number, logits: Float32Array): void {
    const row = this.rows[s]!;
    const { req } = row;
    if (req.signal?.aborted) return this.end(s, 'cancelled');
    const id = sample(logits, req, row.random);
    row.ids.push(id);
    row.next = id;
    this.counts.tokens++;
    req.onToken?.(id);
    if (req.stopIds?.includes(id)) return this.end(s, 'stop');
    if (req.stop?.some((x) => x !== '') && stopAt(this.tok.decode(row.ids), req.stop) >= 0) return this.end(s, 'stop');
    if (row.ids.length >= req.maxNew) return this.end(s, 'length');
    // the token just chosen goes at the slot's next row: none left ends the row
    if (this.st.length[s]! >= this.cache.max) return this.end(s, 'length');
  }

  private end(s: number, finish: FinishReason): void {
    const row = this.rows[s]!;
    this.rows[s] = null;
    this.st.active[s] = false;
    this.finish(row, finish);
  }

  /** the row's result: its text without a final stop id's and cut before a stop string */
  private finish(row: Row, finish: FinishReason): void {
    const { ids, req } = row;
    const last = ids[ids.length - 1];
    let text = this.tok.decode(finish === 'stop' && last !== undefined && req.stopIds?.includes(last) ? ids.slice(0, -1) : ids);
    const at = stopAt(text, req.stop ?? []);
    if (at >= 0) text = text.slice(0, at);
    row.resolve({ ids, text, finish, promptTokens: req.prompt.length, chunks: row.chunks });
  }
}

/** where the first of the stop strings begins in text (-1: none there; empty strings never match) */
export function stopAt(text: string, stop: readonly string[]): number {
  let at = -1;
  for (const x of stop) {
    const i = x ? text.indexOf(x) : -1;
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}
