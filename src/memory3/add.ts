// writing references into a bank with the model the bank belongs to: the checks that come first
// (long enough for a memory, ids valid, unique and new) and the batched write and add. used by
// `engram memory build | add` (cli/memory.ts) and the server's /v1/memory (serve/server.ts).

import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { ModelConfig } from '../model/config.ts';
import type { Transformer } from '../model/transformer.ts';
import { checkId, type MemoryBank } from './bank.ts';
import { encodeMemory } from './blob.ts';
import { quantizeMemories } from './quantize.ts';
import { referenceSpan, referenceTokens, writeMemories } from './write.ts';

/** the longest reference a memory is written from (writeMemories' default maxTokens) */
const MAX_REFERENCE_TOKENS = 128;
/** characters of a reference's text shown on one line */
const SHOW_CHARS = 100;

/** the model that writes memories: its GPU, weights and tokenizer */
export interface Writer {
  gpu: Gpu;
  model: Transformer;
  tok: Tokenizer;
}

/** one line of a reference's text: whitespace runs as one space, cut with an ellipsis */
export function oneLine(text: string, max = SHOW_CHARS): string {
  const s = text.replace(/\s+/g, ' ').trim();
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** a reference to write: its text, optional id, and where it came from (file:line, or a request's field) */
export interface ReferenceLine {
  text: string;
  id?: string;
  where: string;
}

/** the reference tokens a memory may hold for this model (writeMemories' maxTokens) */
export function maxReferenceTokens(c: ModelConfig, prefixLength: number): number {
  return Math.min(MAX_REFERENCE_TOKENS, referenceSpan(c) - prefixLength);
}

/** every reference long enough for K tokens per head, ids unique among them; throws naming the line; id -> where */
export function checkReferences(w: Writer, refs: readonly ReferenceLine[], K: number): Map<string, string> {
  const prefix = referenceTokens(w.tok, 'x').prefix.length;
  const maxTokens = maxReferenceTokens(w.model.config, prefix);
  for (const r of refs) {
    const n = referenceTokens(w.tok, r.text, { maxTokens }).tokens.length;
    if (n < K) {
      throw new EngramError(`${r.where}: the reference '${oneLine(r.text, 60)}' has ${n} tokens; a memory keeps ${K} per KV head (--tokens), so a reference needs at least ${K}`);
    }
  }
  const lineOf = new Map<string, string>();
  for (const r of refs) {
    if (r.id === undefined) continue;
    // the bank's own id rules, here so that a bad id fails before anything is added
    checkId(r.id, r.where);
    const first = lineOf.get(r.id);
    if (first) throw new EngramError(`${r.where}: id '${r.id}' is used twice (first at ${first})`);
    lineOf.set(r.id, r.where);
  }
  return lineOf;
}

/** throws naming the line of the first id (of `lineOf`: id -> where) that the bank holds already */
export async function checkNewIds(lineOf: ReadonlyMap<string, string>, bank: MemoryBank): Promise<void> {
  const ids = [...lineOf.keys()];
  for (let s = 0; s < ids.length; s += 512) {
    const taken = await bank.get(ids.slice(s, s + 512));
    if (taken.length) {
      throw new EngramError(`${lineOf.get(taken[0]!.id)}: id '${taken[0]!.id}' is already in the bank at ${bank.uri}${taken.length > 1 ? ` (and ${taken.length - 1} more)` : ''}; remove it first to replace it`);
    }
  }
}

/**
 * writes the memories of `refs` and adds them to the bank, `batch` at a time; their ids. `deferIndex`:
 * leave the indexes to the caller's reindex() (a bulk build)
 */
export async function writeAndAdd(
  w: Writer,
  bank: MemoryBank,
  refs: readonly ReferenceLine[],
  o: { batch: number; deferIndex: boolean; onBatch?: (done: number) => void },
): Promise<string[]> {
  const { batch } = o;
  const m = bank.manifest;
  const prefix = referenceTokens(w.tok, 'x').prefix.length;
  const maxTokens = maxReferenceTokens(w.model.config, prefix);
  const ids: string[] = [];
  for (let s = 0; s < refs.length; s += batch) {
    const part = refs.slice(s, s + batch);
    const written = await writeMemories(w.gpu, w.model, w.tok, part.map((r) => r.text), { layers: m.layers, tokens: m.tokens, dtype: m.dtype === 'pq' ? 'f32' : m.dtype, batch, maxTokens });
    const mems = bank.codebooks ? await quantizeMemories(w.gpu, bank.codebooks, written.map((x) => x.memory)) : written.map((x) => x.memory);
    const added = await bank.add(
      written.map((x, i) => ({ ...(part[i]!.id !== undefined ? { id: part[i]!.id } : {}), text: x.text, tokens: x.tokens, memory: encodeMemory(mems[i]!) })),
      { deferIndex: o.deferIndex },
    );
    ids.push(...added);
    o.onBatch?.(s + part.length);
  }
  return ids;
}
