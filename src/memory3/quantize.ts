// product-quantised memories (the spec's optional compression, shared/specs/memory3.md App. B): codebooks
// for a bank's memories and the memories recoded against them (blob dtype 'pq').
//
// one codebook per memory layer and per K or V (2L of them, MemoryCodebooks order: layer 0 K, layer 0 V,
// layer 1 K, ...): keys and values, and the layers, have their own distributions. each codes a headDim
// vector in `subvectors` bytes (pq.ts: plain PQ, k-means on the GPU). trained on the vectors of a sample
// of the bank's memories (every kept token of every head: L x Hkv x T vectors per memory and codebook
// pair). a quantised memory keeps its codes and carries their decoding as k/v, so what a bank stores is
// exactly what its readers will see.
//
// codebook set bytes (encodeCodebooks / decodeCodebooks; little-endian): 'EPQS', u32 count, then per
// codebook a u32 length and its pq.ts bytes (each with its own checksum).

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { MemoryCodebooks, SparseMemory } from './blob.ts';
import { decodeCodebook, encodeCodebook, pqDecode, pqEncode, trainPq } from './pq.ts';

export interface QuantizeOptions {
  /** code bytes per headDim vector (default headDim / 8: 16x smaller than bf16) */
  subvectors?: number;
  /** centroids per sub-space (default 256: a byte per code) */
  centroids?: number;
  /** k-means iterations (default 15) */
  iters?: number;
  /** training vectors per codebook at most (default 65536) */
  maxTrain?: number;
  seed?: number;
}

const SET_MAGIC = 'EPQS';

/** the vectors of layer l's keys (which 0) or values (which 1) of every memory, one after another */
function gather(mems: readonly SparseMemory[], l: number, which: 0 | 1): Float32Array {
  const m0 = mems[0]!;
  const block = m0.kvHeads * m0.tokens * m0.headDim;
  const out = new Float32Array(mems.length * block);
  mems.forEach((m, i) => out.set((which === 0 ? m.k : m.v).subarray(l * block, (l + 1) * block), i * block));
  return out;
}

function checkMemories(mems: readonly SparseMemory[], what: string): void {
  if (mems.length === 0) throw new EngramError(`${what}: no memories`);
  const m0 = mems[0]!;
  const bad = mems.findIndex((m) => m.layers !== m0.layers || m.kvHeads !== m0.kvHeads || m.tokens !== m0.tokens || m.headDim !== m0.headDim);
  if (bad >= 0) throw new EngramError(`${what}: memory ${bad} has another shape than memory 0; a bank's memories share one`);
}

/** Codebooks (2L: each memory layer's K and V) learned from these memories' vectors by k-means on the GPU. */
export async function trainMemoryCodebooks(gpu: Gpu, mems: readonly SparseMemory[], o: QuantizeOptions = {}): Promise<MemoryCodebooks> {
  checkMemories(mems, 'trainMemoryCodebooks');
  const { layers: L, headDim: D } = mems[0]!;
  const subvectors = o.subvectors ?? Math.max(1, Math.floor(D / 8));
  if (!(Number.isInteger(subvectors) && subvectors >= 1 && D % subvectors === 0)) {
    throw new EngramError(`trainMemoryCodebooks: subvectors ${subvectors} must be a positive divisor of headDim ${D}`);
  }
  const books = [];
  for (let l = 0; l < L; l++) {
    for (const which of [0, 1] as const) {
      books.push(await trainPq(gpu, gather(mems, l, which), { dim: D, subvectors, centroids: o.centroids ?? 256, iters: o.iters ?? 15, seed: (o.seed ?? 0) + 2 * l + which, maxTrain: o.maxTrain ?? 65536 }));
    }
  }
  return { books };
}

/** The memories recoded against `codebooks` (dtype 'pq': codes, and k/v their decoding). */
export async function quantizeMemories(gpu: Gpu, codebooks: MemoryCodebooks, mems: readonly SparseMemory[]): Promise<SparseMemory[]> {
  if (mems.length === 0) return [];
  checkMemories(mems, 'quantizeMemories');
  const { layers: L, kvHeads: H, tokens: T, headDim: D } = mems[0]!;
  if (codebooks.books.length !== 2 * L || codebooks.books.some((b) => b.dim !== D || b.subvectors !== codebooks.books[0]!.subvectors)) {
    throw new EngramError(`quantizeMemories: ${codebooks.books.length} codebooks do not fit memories of ${L} layers and head dim ${D} (2 per layer, one code size, dim ${D})`);
  }
  const M = codebooks.books[0]!.subvectors;
  const rows = H * T;
  const out = mems.map((m) => ({ ...m, dtype: 'pq' as const, subvectors: M, codes: new Uint8Array(2 * L * rows * M), k: new Float32Array(m.k.length), v: new Float32Array(m.v.length) }));
  for (let l = 0; l < L; l++) {
    for (const which of [0, 1] as const) {
      const book = codebooks.books[2 * l + which]!;
      const codes = await pqEncode(gpu, book, gather(mems, l, which));
      const decoded = pqDecode(book, codes);
      out.forEach((m, i) => {
        m.codes.set(codes.subarray(i * rows * M, (i + 1) * rows * M), (2 * l + which) * rows * M);
        (which === 0 ? m.k : m.v).set(decoded.subarray(i * rows * D, (i + 1) * rows * D), l * rows * D);
      });
    }
  }
  return out;
}

/** A codebook set as bytes (see the header). */
export function encodeCodebooks(c: MemoryCodebooks): Uint8Array {
  const parts = c.books.map(encodeCodebook);
  const out = new Uint8Array(8 + parts.reduce((n, p) => n + 4 + p.length, 0));
  const view = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) out[i] = SET_MAGIC.charCodeAt(i);
  view.setUint32(4, parts.length, true);
  let at = 8;
  for (const p of parts) {
    view.setUint32(at, p.length, true);
    out.set(p, at + 4);
    at += 4 + p.length;
  }
  return out;
}

/** Reads a codebook set (each codebook verified by its own checksum); `where` names it in errors. */
export function decodeCodebooks(bytes: Uint8Array, where: string): MemoryCodebooks {
  const fail = (what: string) => new EngramError(`${where}: ${what}`);
  if (bytes.length < 8 || String.fromCharCode(...bytes.subarray(0, 4)) !== SET_MAGIC) throw fail(`not a codebook set (magic '${SET_MAGIC}' expected)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = view.getUint32(4, true);
  const books = [];
  let at = 8;
  for (let i = 0; i < n; i++) {
    if (at + 4 > bytes.length) throw fail(`truncated before codebook ${i} of ${n}`);
    const len = view.getUint32(at, true);
    if (at + 4 + len > bytes.length) throw fail(`codebook ${i} of ${n} is truncated`);
    books.push(decodeCodebook(bytes.subarray(at + 4, at + 4 + len), `${where}, codebook ${i}`));
    at += 4 + len;
  }
  if (at !== bytes.length) throw fail(`${bytes.length - at} trailing bytes after ${n} codebooks`);
  return { books };
}
