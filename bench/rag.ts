// the explicit benchmarks' RAG baseline and their speed runs' knowledge base (bench/suites/explicit.ts,
// scripts/explicit_speed.ts): RAG puts a row's 5 retrieved references' text before its prompt; the
// speed runs search a bank of 128-token windows of training text (the spec's longest reference;
// the paper's knowledge base is part of its pretraining data).

import type { Tokenizer } from '../src/data/tokenizer.ts';
import type { MemoryBank, SearchHit } from '../src/memory3/bank.ts';

/** the references' text, a line each, then the prompt */
export const ragPrompt = (hits: readonly SearchHit[], prompt: string): string => hits.map((h) => h.text).join('\n') + '\n' + prompt;

/** `count` windows of `len` tokens spread evenly through `ids`, as text */
export function windowTexts(tok: Tokenizer, ids: Uint32Array, count: number, len: number): string[] {
  const stride = Math.floor((ids.length - len) / count);
  if (stride < 1) throw new Error(`windowTexts: ${ids.length} tokens hold fewer than ${count} windows of ${len}`);
  return Array.from({ length: count }, (_, i) => tok.decode(ids.subarray(i * stride, i * stride + len)));
}

/**
 * RAG's batch: each row's own search (its text, top 5) put before its tokens, every row cut from
 * the front to the shortest one and to `max` tokens (lockstep rows share one length)
 */
export async function ragRows(bank: MemoryBank, tok: Tokenizer, ins: readonly (readonly number[])[], max: number): Promise<number[][]> {
  const hits = await Promise.all(ins.map((x) => bank.search(tok.decode(x), { k: 5 })));
  const rows = ins.map((x, r) => [...tok.encode(ragPrompt(hits[r]!, '')), ...x]);
  const len = Math.min(...rows.map((x) => x.length), max);
  return rows.map((x) => x.slice(x.length - len));
}
