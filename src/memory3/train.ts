// Memory³'s second training stage (spec shared/specs/memory3.md §4): a warmed-up model continues
// training with explicit memory. every `chunk`-token chunk of a training sequence attends, at the
// memory blocks, to the memories of its own reference and the previous `window` - 1 chunks'
// references of the stream (planRetrieval fixed them per corpus; leaking pairs are already out),
// encoded on the fly by the model being trained.
//
// choices where the spec is silent ([UNVERIFIED] there), each an option or stated here:
//   - by default no gradient flows into the references' encoding: a step's memories are constants
//     of that step (computed with its weights, before the forward). cheaper, and at inference
//     memories are fixed too. with `gradient`, the loss's gradients of the memory keys and values
//     go back through the encoding into the weights (the references' forward is kept for it: the
//     blocks up to the last memory block must be dense), so that training also shapes how a
//     reference is written, as it shapes how a context is encoded for a lookup in it
//   - the selection of `tokens` (8) per head is applied in training, as at inference
//   - a chunk whose reference is missing (every candidate leaked, or the stream has none there)
//     gets a reference drawn at random from the knowledge base (seeded by the step): every chunk
//     reads `window` memories, as every inference chunk reads `topk`
//   - `own`: each chunk may instead read the `window` best references of its own text, as an
//     inference chunk reads its search's top k (more to encode per step; aligned with reading)
//   - sequences start at chunk boundaries of the stream, so a chunk is one of planRetrieval's
// layout, as at inference (read.ts): at every block the sink (the prefix's keys and values) comes
// first; at memory blocks each chunk then sees its `window` memories (keys at their positions
// inside their references: parallel positions); the sequence starts at RoPE position
// prefix + memoryPositions.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { fill } from '../kernels/copy/copy.ts';
import { embeddingBackward } from '../kernels/embedding/embedding.ts';
import type { TrainMemory, Transformer } from '../model/transformer.ts';
import { Rng } from '../testing/rng.ts';
import type { Batch } from '../train/trainer.ts';
import { copyMemoryRows } from './blob.ts';
import { defaultMemoryLayers, disposeKept, encodeReferences, encodeReferencesKept, sinkKV, type KeptEncoding } from './write.ts';

export interface StageTwoOptions {
  /** the prefix's token ids ("Reference:" as the tokenizer writes it) */
  prefix: readonly number[];
  /** tokens per chunk (default 64) */
  chunk?: number;
  /** memories per chunk: its own and the previous window - 1 chunks' references (default 5) */
  window?: number;
  /**
   * each chunk reads the `window` references planned for itself (planRetrieval perChunk = window),
   * as an inference chunk reads its own search's top k, instead of its own and the previous
   * chunks' one each (default false: the paper's scheme, which shares a chunk's reference with the
   * next window - 1 chunks to save encoding)
   */
  own?: boolean;
  /** tokens kept per (memory block, KV head) (default 8) */
  tokens?: number;
  /** memory blocks (default the first half) */
  layers?: readonly number[];
  /** the position range memories share (default 128) */
  memoryPositions?: number;
  seed?: number;
  /** gradients through the references' encoding (default false: memories are constants of the step) */
  gradient?: boolean;
}

/** tokens per batch of references encoded together (their activations at every block live at once) */
const ENCODE_TOKENS = 16384;

/** training batches with their explicit memories */
export class MemoryBatcher {
  private readonly o: Required<Omit<StageTwoOptions, 'layers'>> & { layers: number[] };
  /**
   * wall time spent in batch() (seconds) and the part of it encoding references (the forward,
   * selection and readbacks of encodeReferences); with GPU work of an earlier step still queued,
   * the encoding waits for it too
   */
  readonly time = { batches: 0, seconds: 0, encodeSeconds: 0, references: 0 };

  constructor(
    private readonly gpu: Gpu,
    private readonly model: Transformer,
    /** the knowledge base: each reference's token ids (without the prefix) */
    private readonly refs: readonly (readonly number[])[],
    /** planRetrieval's reference per chunk of the stream (-1: none); with `own`, `window` per chunk */
    private readonly plan: Int32Array,
    o: StageTwoOptions,
  ) {
    this.o = {
      prefix: o.prefix,
      chunk: o.chunk ?? 64,
      window: o.window ?? 5,
      own: o.own ?? false,
      tokens: o.tokens ?? 8,
      layers: [...(o.layers ?? defaultMemoryLayers(model.config))],
      memoryPositions: o.memoryPositions ?? 128,
      seed: o.seed ?? 0,
      gradient: o.gradient ?? false,
    };
    if (refs.length === 0) throw new EngramError('MemoryBatcher: the knowledge base has no references');
    if (o.prefix.length === 0) throw new EngramError('MemoryBatcher: the prefix needs at least one token');
    if (this.o.own && plan.length % this.o.window !== 0) throw new EngramError(`MemoryBatcher: with own, the plan needs window (${this.o.window}) references per chunk (planRetrieval perChunk), got ${plan.length} entries`);
  }

  /**
   * step s's batch: B sequences of T tokens (T a multiple of the chunk) from chunk boundaries of
   * the stream, their targets, and their memories; dispose() frees the memory tensors. with
   * `gradient`, afterBackward() (the Trainer calls it after the batch's backward) takes the
   * memories' gradients back through the references' encoding
   */
  async batch(stream: Uint32Array, B: number, T: number, step: number): Promise<Batch & { dispose(): void }> {
    const t0 = performance.now();
    const { chunk, window, tokens: K, layers, prefix, gradient } = this.o;
    if (!(T > 0 && T % chunk === 0)) throw new EngramError(`MemoryBatcher: sequences of ${T} tokens must be a whole number of ${chunk}-token chunks`);
    const C = T / chunk;
    const span = Math.floor((stream.length - T - 1) / chunk) + 1;
    if (span < 1) throw new EngramError(`MemoryBatcher: ${stream.length} tokens is too few for sequences of ${T} + 1`);
    const rng = new Rng((this.o.seed * 0x9e3779b1 + step * 0x85ebca6b + 1) >>> 0);
    const ids = new Uint32Array(B * T);
    const targets = new Uint32Array(B * T);
    // per (sequence, chunk): the references of the window (oldest first; with own, best first)
    const windows: number[][] = [];
    for (let b = 0; b < B; b++) {
      const at = chunk * rng.int(span);
      ids.set(stream.subarray(at, at + T), b * T);
      targets.set(stream.subarray(at + 1, at + T + 1), b * T);
      for (let c = 0; c < C; c++) {
        const g = at / chunk + c;
        const w: number[] = [];
        for (let j = 0; j < window; j++) {
          // own: the chunk's j-th planned reference; else chunk g - (window - 1 - j)'s one
          const slot = this.o.own ? g * window + j : g - (window - 1 - j);
          const r = slot >= 0 && slot < this.plan.length ? this.plan[slot]! : -1;
          w.push(r >= 0 ? r : rng.int(this.refs.length));
        }
        windows.push(w);
      }
    }
    const distinct = [...new Set(windows.flat())];
    // encoding batches of up to ENCODE_TOKENS tokens: a batch costs a readback per memory block, whatever its size
    const longest = Math.max(...distinct.map((r) => prefix.length + this.refs[r]!.length));
    const te = performance.now();
    const refs = distinct.map((r) => ({ prefix, tokens: this.refs[r]! }));
    const eo = { layers, tokens: K, batch: Math.max(1, Math.floor(ENCODE_TOKENS / longest)) };
    const last = this.model.config.layers - 1; // every block's sink takes its gradient too: the prefix rows of an encoding
    const { mems, kept } = gradient ? await encodeReferencesKept(this.gpu, this.model, refs, { ...eo, through: last }) : { mems: await encodeReferences(this.gpu, this.model, refs, eo), kept: [] };
    this.time.encodeSeconds += (performance.now() - te) / 1000;
    this.time.references += distinct.length;
    const memOf = new Map(distinct.map((r, i) => [r, mems[i]!]));
    const owned: Tensor[] = [];
    let done = false;
    const dispose = () => {
      owned.forEach((t) => t.dispose());
      if (!done) disposeKept(kept);
      done = true;
    };
    try {
      const sink = await sinkKV(this.gpu, this.model, prefix);
      const c = this.model.config;
      const HS = c.dim / c.heads;
      const Hkv = c.kvHeads;
      const p = prefix.length;
      const row = Hkv * HS;
      const M = p + window * K;
      const blocks: TrainMemory['blocks'] = [];
      for (let l = 0; l < c.layers; l++) {
        const li = layers.indexOf(l);
        const s = sink[l]!;
        if (li < 0) {
          // the sink alone, the same for every sequence
          const k = new Float32Array(B * p * row);
          const v = new Float32Array(B * p * row);
          for (let b = 0; b < B; b++) {
            k.set(s.k, b * p * row);
            v.set(s.v, b * p * row);
          }
          blocks.push({ k: await this.upload(k, [B, p, Hkv, HS], owned), v: await this.upload(v, [B, p, Hkv, HS], owned), chunk: 0 });
          continue;
        }
        const k = new Float32Array(B * C * M * row);
        const v = new Float32Array(B * C * M * row);
        for (let b = 0; b < B; b++) {
          for (let ch = 0; ch < C; ch++) {
            const base = (b * C + ch) * M;
            k.set(s.k, base * row);
            v.set(s.v, base * row);
            windows[b * C + ch]!.forEach((r, m) => copyMemoryRows(memOf.get(r)!, li, k, v, base + p + m * K));
          }
        }
        blocks.push({ k: await this.upload(k, [B, C * M, Hkv, HS], owned), v: await this.upload(v, [B, C * M, Hkv, HS], owned), chunk });
      }
      const idsT = await this.upload(ids, [B, T], owned, 'u32');
      const targetsT = await this.upload(targets, [B, T], owned, 'u32');
      const memory: TrainMemory = { blocks, pos0: p + this.o.memoryPositions };
      let afterBackward: (() => Promise<void>) | undefined;
      if (gradient) {
        // every block's memory gradients, then per kept batch and block, each memory row as a row of
        // the batch's keys: (reference, position, KV head) for a memory's rows; the prefix of the
        // batch's first reference for the sink's rows (the sink is the prefix's keys and values,
        // the same in every encoding; the first kept batch takes them); an id past the batch's
        // rows (adds nothing) for rows of other batches
        memory.grads = [];
        for (const blk of blocks) memory.grads.push({ dk: await this.alloc(blk.k.shape, owned), dv: await this.alloc(blk.v.shape, owned) }); // backward overwrites them
        const slotOf = new Map(distinct.map((r, i) => [r, i]));
        const rowIds: Tensor[][] = [];
        for (const [b, kb] of kept.entries()) {
          const out: Tensor[] = [];
          for (let l = 0; l <= last; l++) {
            const li = layers.indexOf(l);
            // memory blocks: a block of M rows per chunk; sink-only blocks: p rows per sequence
            const chunks = li < 0 ? null : windows.map((w) => w.map((r) => ({ q: slotOf.get(r)! - kb.first, positions: memOf.get(r)!.positions })));
            const idx = encodingRows(kb, { blocks: li < 0 ? B : B * C, rows: li < 0 ? p : M, sink: b === 0 ? p : 0, Hkv, K, li, chunks });
            out.push(await this.upload(idx, [idx.length], owned, 'u32'));
          }
          rowIds.push(out);
        }
        afterBackward = async () => {
          for (const [b, kb] of kept.entries()) {
            const rows = kb.count * kb.T * Hkv;
            const grads: { dk: Tensor; dv: Tensor }[] = [];
            const made: Tensor[] = [];
            try {
              for (let l = 0; l <= last; l++) {
                const g = memory.grads![l]!;
                const ids = rowIds[b]![l]!;
                const dk = await this.alloc([rows, HS], made, true);
                const dv = await this.alloc([rows, HS], made, true);
                await embeddingBackward(this.gpu, { dW: dk }, { dout: g.dk.reshape([ids.size, HS]), ids });
                await embeddingBackward(this.gpu, { dW: dv }, { dout: g.dv.reshape([ids.size, HS]), ids });
                grads.push({ dk: dk.reshape([kb.count, kb.T, Hkv, HS]), dv: dv.reshape([kb.count * kb.T, Hkv * HS]) });
              }
              await this.model.encodeBackward(kb.state, grads);
              kb.state.ids.dispose();
            } finally {
              made.forEach((t) => t.dispose());
            }
          }
          done = true; // encodeBackward freed the kept forwards
        };
      }
      this.time.batches++;
      this.time.seconds += (performance.now() - t0) / 1000;
      return { ids: idsT, targets: targetsT, memory, ...(afterBackward ? { afterBackward } : {}), dispose };
    } catch (e) {
      dispose();
      throw e;
    }
  }

  /** an f32 tensor (zeroed with `zero`) that `owned` frees */
  private async alloc(shape: readonly number[], owned: Tensor[], zero = false): Promise<Tensor> {
    const t = await this.gpu.tensor(shape, 'f32', 'memory_grad');
    owned.push(t);
    if (zero) await fill(this.gpu, t, 0);
    return t;
  }

  private async upload(x: Float32Array | Uint32Array, shape: number[], owned: Tensor[], dtype: 'f32' | 'u32' = 'f32'): Promise<Tensor> {
    const t = await this.gpu.tensorFrom(x, shape, dtype, 'memory_batch');
    owned.push(t);
    return t;
  }
}

/**
 * for each row of a block's memory tensor ((blocks x rows, kvHeads) rows of headDim, flattened),
 * the row of kb's keys (count x T x kvHeads) it was read from: the first `sink` rows of every
 * block are the prefix's (the sink: the prefix's keys and values are the same in every encoding);
 * with `chunks`, block c's memory m holds its reference's `K` kept positions per KV head at memory
 * layer li (after the sink's p = rows - memories x K rows), q its row in kb (outside kb: not this
 * batch's). every other row gets an id past kb's rows, which a scatter ignores
 */
function encodingRows(
  kb: KeptEncoding,
  o: { blocks: number; rows: number; sink: number; Hkv: number; K: number; li: number; chunks: { q: number; positions: Uint32Array }[][] | null },
): Uint32Array {
  const { blocks, rows, sink, Hkv, K, li, chunks } = o;
  const idx = new Uint32Array(blocks * rows * Hkv).fill(kb.count * kb.T * Hkv);
  const row = (block: number, r: number, g: number) => (block * rows + r) * Hkv + g;
  for (let c = 0; c < blocks; c++) {
    for (let r = 0; r < sink; r++) for (let g = 0; g < Hkv; g++) idx[row(c, r, g)] = r * Hkv + g;
    const mems = chunks?.[c] ?? [];
    const p = rows - mems.length * K;
    mems.forEach(({ q, positions }, m) => {
      if (q < 0 || q >= kb.count) return;
      for (let g = 0; g < Hkv; g++) for (let j = 0; j < K; j++) idx[row(c, p + m * K + j, g)] = (q * kb.T + positions[(li * Hkv + g) * K + j]!) * Hkv + g;
    });
  }
  return idx;
}
