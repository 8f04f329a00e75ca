// Memory³ writing (spec shared/specs/memory3.md §1): a reference text becomes an explicit memory,
// the keys and values of a few of its tokens at the model's memory layers.
//
//   tokens     the prefix ("Reference:", the spec's `<s>Reference:` minus a BOS our tokenizers do
//              not have) and then the reference, at most `maxTokens` (128) of its tokens; positions
//              0.. from the prefix on, so a memory key carries the RoPE position it had here
//   layers     the memory layers: the first half of the blocks by default (the paper's choice;
//              it remarks that middle layers may be better: configurable)
//   selection  per (memory layer, KV head), the `tokens` (8) reference tokens j with the largest
//              Σ_i Σ_{h in the head's query group} exp(q_i,h · k_j / √d), over the reference's own
//              tokens i, queries and keys before RoPE, no mask; the prefix neither scores nor is
//              scored. memselForward runs it on the GPU for a batch of references at once
//   stored     the selected tokens' keys after RoPE and their values, with their positions
//              (SparseMemory, memory3/blob.ts; bf16 by default)
//
// a batch of references is padded to its longest; padding sits after each reference's end, so
// causal attention keeps it out of the reference's own keys and values. the selected keys and
// values are gathered on the GPU (memselGather) and read back once per batch, every memory layer's
// together: K rows per (reference, KV head) instead of every position (Memory³ training encodes
// hundreds of references per step this way).
//
// a reference shorter than `tokens` has too few tokens to fill a memory: it is an error naming it
// (a memory with empty slots would need a mask when it is read).

import { createHash } from 'node:crypto';
import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { Arena } from '../gpu/buffers.ts';
import { memselForward, MEMSEL_MAX_T } from '../kernels/memsel/memsel.ts';
import { memselGather } from '../kernels/memsel/memsel_gather.ts';
import type { ModelConfig } from '../model/config.ts';
import { disposeEncode, type AttentionInputs, type EncodeState, type Transformer } from '../model/transformer.ts';
import type { MemoryDType, SparseMemory } from './blob.ts';

export const REFERENCE_PREFIX = 'Reference:';

export interface WriteOptions {
  /** memory layers (default: the first half of the blocks) */
  layers?: readonly number[];
  /** tokens kept per (layer, KV head); default 8 */
  tokens?: number;
  /** reference tokens kept at most (longer references are cut); default 128 */
  maxTokens?: number;
  /** references encoded at once; default 32 */
  batch?: number;
  /** storage of the memory's keys and values; default bf16 */
  dtype?: MemoryDType;
  /** how a KV head's query heads combine in the score (memselForward); default 'sum' */
  group?: 'sum' | 'first';
  prefix?: string;
}

export interface WrittenMemory {
  text: string;
  /** the reference's own token ids (not the prefix), as encoded */
  tokens: number[];
  memory: SparseMemory;
}

/** the default memory layers of a model: the first half of its blocks (at least one) */
export function defaultMemoryLayers(config: Pick<ModelConfig, 'layers'>): number[] {
  return Array.from({ length: Math.max(1, Math.floor(config.layers / 2)) }, (_, i) => i);
}

/** positions a reference may take with its prefix: the model's maxSeqLen, and memsel's limit */
export function referenceSpan(config: Pick<ModelConfig, 'maxSeqLen'>): number {
  return Math.min(MEMSEL_MAX_T, config.maxSeqLen);
}

/** the prefix's token ids and a reference's, cut to maxTokens */
export function referenceTokens(tok: Tokenizer, text: string, o: { prefix?: string; maxTokens?: number } = {}): { prefix: number[]; tokens: number[] } {
  const prefix = Array.from(tok.encode(o.prefix ?? REFERENCE_PREFIX));
  const tokens = Array.from(tok.encode(` ${text.trim()}`)).slice(0, o.maxTokens ?? 128);
  return { prefix, tokens };
}

/**
 * what identifies a model for a memory bank: sha256 over its config, weights and tokenizer (the
 * checkpoint's files of those names); memories written by one model mean nothing to another
 */
export function modelFingerprint(files: Readonly<Record<string, Uint8Array>>): string {
  const h = createHash('sha256');
  for (const name of ['config.json', 'model.safetensors', 'tokenizer.json']) {
    const f = files[name];
    if (!f) throw new EngramError(`modelFingerprint: the checkpoint has no ${name}`);
    h.update(name).update(createHash('sha256').update(f).digest());
  }
  return h.digest('hex');
}

/**
 * the keys and values (after RoPE) of the prefix at every block: the attention sink that reading
 * and training put first, computed with the model's current weights
 */
export async function sinkKV(gpu: Gpu, model: Transformer, prefix: readonly number[]): Promise<{ k: Float32Array; v: Float32Array }[]> {
  const ids = await gpu.tensorFrom(prefix, [1, prefix.length], 'u32', 'sink_ids');
  const out: { k: Float32Array; v: Float32Array }[] = [];
  try {
    await model.attentionInputs(ids, Array.from({ length: model.config.layers }, (_, l) => l), async (_l, t) => {
      out.push({ k: (await gpu.read(t.k)) as Float32Array, v: (await gpu.read(t.v)) as Float32Array });
    });
  } finally {
    ids.dispose();
  }
  return out;
}

/** the explicit memories of `texts`, in order */
export async function writeMemories(gpu: Gpu, model: Transformer, tok: Tokenizer, texts: readonly string[], o: WriteOptions = {}): Promise<WrittenMemory[]> {
  const refs = texts.map((text) => ({ text, ...referenceTokens(tok, text, o) }));
  const mems = await encodeReferences(gpu, model, refs, o);
  return refs.map((r, i) => ({ text: r.text, tokens: r.tokens, memory: { ...mems[i]!, dtype: o.dtype ?? 'bf16' } }));
}

/**
 * the memories of references given as token ids (prefix, then the reference's tokens), in order;
 * keys and values as f32 (dtype 'f32'). writeMemories' work, and Memory³ training's, which encodes
 * each step's references with the weights of that step
 */
export async function encodeReferences(
  gpu: Gpu,
  model: Transformer,
  refs: readonly { prefix: readonly number[]; tokens: readonly number[] }[],
  o: Pick<WriteOptions, 'layers' | 'tokens' | 'batch' | 'group'> = {},
): Promise<SparseMemory[]> {
  return (await encode(gpu, model, refs, o, false)).mems;
}

/** one batch of encodeReferencesKept: its forward, kept (EncodeState), and which references it holds */
export interface KeptEncoding {
  state: EncodeState;
  /** the batch's references are refs[first .. first + count), row i of the batch is refs[first + i] */
  first: number;
  count: number;
  /** positions per row (the batch's longest reference with its prefix) */
  T: number;
}

/**
 * encodeReferences, with each batch's forward kept for Transformer.encodeBackward (the memories'
 * keys and values then take gradients back into the weights: Memory³ training with `gradient`),
 * through block o.through at least (the prefix's keys and values there are the sink's); free what
 * is not taken back with disposeKept
 */
export async function encodeReferencesKept(
  gpu: Gpu,
  model: Transformer,
  refs: readonly { prefix: readonly number[]; tokens: readonly number[] }[],
  o: Pick<WriteOptions, 'layers' | 'tokens' | 'batch' | 'group'> & { through?: number } = {},
): Promise<{ mems: SparseMemory[]; kept: KeptEncoding[] }> {
  return encode(gpu, model, refs, o, true);
}

/** frees kept encodings (their activations and ids) */
export function disposeKept(kept: readonly KeptEncoding[]): void {
  for (const k of kept) {
    disposeEncode(k.state);
    k.state.ids.dispose();
  }
}

async function encode(
  gpu: Gpu,
  model: Transformer,
  refs: readonly { prefix: readonly number[]; tokens: readonly number[] }[],
  o: Pick<WriteOptions, 'layers' | 'tokens' | 'batch' | 'group'> & { through?: number },
  keep: boolean,
): Promise<{ mems: SparseMemory[]; kept: KeptEncoding[] }> {
  const c = model.config;
  const layers = [...(o.layers ?? defaultMemoryLayers(c))];
  const K = o.tokens ?? 8;
  const batch = o.batch ?? 32;
  if (layers.length === 0 || new Set(layers).size !== layers.length || layers.some((l) => !(Number.isInteger(l) && l >= 0 && l < c.layers))) {
    throw new EngramError(`writeMemories: layers [${layers.join(', ')}] must be distinct blocks in 0..${c.layers - 1}`);
  }
  if (!(Number.isInteger(batch) && batch > 0)) throw new EngramError(`writeMemories: batch must be a positive integer, got ${batch}`);
  refs.forEach((r, i) => {
    if (r.tokens.length < K) {
      throw new EngramError(`writeMemories: reference ${i} has ${r.tokens.length} tokens; a memory keeps ${K} per head, so give it at least ${K}`);
    }
    const T = r.prefix.length + r.tokens.length;
    if (T > referenceSpan(c)) {
      throw new EngramError(`writeMemories: reference ${i} is ${T} tokens with its prefix; the limit is ${referenceSpan(c)} (lower maxTokens)`);
    }
  });
  const HS = c.dim / c.heads;
  const Hkv = c.kvHeads;
  const out: SparseMemory[] = [];
  const kept: KeptEncoding[] = [];
  try {
    await encodeBatches();
  } catch (e) {
    disposeKept(kept); // the batches kept before the failure
    throw e;
  }
  return { mems: out, kept };

  async function encodeBatches(): Promise<void> {
    for (let s = 0; s < refs.length; s += batch) {
      const chunk = refs.slice(s, s + batch);
      const B = chunk.length;
      const T = Math.max(...chunk.map((r) => r.prefix.length + r.tokens.length));
      const ids = new Uint32Array(B * T);
      chunk.forEach((r, b) => ids.set([...r.prefix, ...r.tokens], b * T));
      const idsT = await gpu.tensorFrom(ids, [B, T], 'u32', 'ref_ids');
      const start = await gpu.tensorFrom(chunk.map((r) => r.prefix.length), [B], 'u32', 'ref_start');
      const length = await gpu.tensorFrom(chunk.map((r) => r.prefix.length + r.tokens.length), [B], 'u32', 'ref_length');
      // per memory layer: the selection and the selected keys and values, read back together at the end
      const picked = new Arena(gpu, 'ref_picked');
      for (const li of layers.keys()) {
        picked.declare(`sel${li}`, [B, Hkv, K], 'u32');
        picked.declare(`k${li}`, [B, Hkv, K, HS]);
        picked.declare(`v${li}`, [B, Hkv, K, HS]);
      }
      let back: Map<string, ArrayBuffer>;
      let state: EncodeState | null = null;
      try {
        await picked.commit();
        const visit = async (layer: number, t: AttentionInputs) => {
          const li = layers.indexOf(layer);
          if (li < 0) return;
          const indices = picked.get(`sel${li}`);
          await memselForward(gpu, { indices }, { q: t.q0, k: t.k0, start, length }, { group: o.group ?? 'sum' });
          await memselGather(gpu, { ok: picked.get(`k${li}`), ov: picked.get(`v${li}`) }, { k: t.k, v: t.v, indices });
        };
        if (keep) state = await model.encodeForward(idsT, Math.max(o.through ?? 0, ...layers), visit);
        else await model.attentionInputs(idsT, layers, visit);
        back = await readArena(gpu, picked);
      } catch (e) {
        if (state) disposeEncode(state);
        state = null;
        throw e;
      } finally {
        for (const u of [start, length]) u.dispose();
        if (!state) idsT.dispose();
        picked.dispose();
      }
      if (state) kept.push({ state, first: s, count: B, T });
      const per = Hkv * K;
      const mems = chunk.map((_, b): SparseMemory => {
        const m: SparseMemory = {
          layers: layers.length,
          kvHeads: Hkv,
          tokens: K,
          headDim: HS,
          dtype: 'f32',
          k: new Float32Array(layers.length * per * HS),
          v: new Float32Array(layers.length * per * HS),
          positions: new Uint32Array(layers.length * per),
        };
        for (const li of layers.keys()) {
          // slots (layer, g, j): the batch's (b, g, j) rows are contiguous per b
          m.positions.set(new Uint32Array(back.get(`sel${li}`)!, b * per * 4, per), li * per);
          m.k.set(new Float32Array(back.get(`k${li}`)!, b * per * HS * 4, per * HS), li * per * HS);
          m.v.set(new Float32Array(back.get(`v${li}`)!, b * per * HS * 4, per * HS), li * per * HS);
        }
        return m;
      });
      out.push(...mems);
    }
  }
}

/** every tensor of a committed arena, read back: one readback per buffer of it */
async function readArena(gpu: Gpu, arena: Arena): Promise<Map<string, ArrayBuffer>> {
  const byBuffer = new Map<GPUBuffer, { name: string; offset: number; size: number }[]>();
  for (const name of arena.names()) {
    const t = arena.get(name);
    const list = byBuffer.get(t.buffer) ?? [];
    list.push({ name, offset: t.offset, size: t.byteLength });
    byBuffer.set(t.buffer, list);
  }
  const out = new Map<string, ArrayBuffer>();
  for (const [buffer, list] of byBuffer) {
    const bytes = await gpu.readRanges(buffer, list);
    list.forEach((r, i) => out.set(r.name, bytes[i]!));
  }
  return out;
}
