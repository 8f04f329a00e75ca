// a small memory bank as one file, and its in-memory reader: what a browser loads instead of a
// LanceDB bank (the web demo fetches it; StaticBank is a MemorySource for MemoryReader).
//
// exportBank reads a bank through its public API (list in insertion order, get) and writes
// (little-endian):
//   offset size
//    0     4    magic 'EMBX'
//    4     2    u16 format version (1)
//    6     2    u16 0
//    8     4    u32 J: bytes of the index (JSON, padded with spaces so that 16 + J is a multiple of 4)
//   12     4    u32 CRC-32 (io/crc32.ts) of bytes [16, end): the index and every blob
//   16     J    the index, UTF-8 JSON: { manifest, codebooks: {offset, length} | null,
//               refs: [{ id, text, tokens, offset, length }] } (manifest: the bank's, BankManifest)
//   ...         the memory blobs (blob.ts bytes, each with its own CRC) and, for a pq bank, its
//               codebook set (quantize.ts encodeCodebooks), each at its offset from the file's
//               start, every offset a multiple of 4 (zero padding between), nothing after the last
// pq banks are exported with their codebooks (the manifest's sha256 of them is kept; the file's
// CRC covers them, and each codebook has its own checksum). a bank's dense vectors are not
// exported: StaticBank searches by BM25 only.
//
// StaticBank.load checks everything before use: magic, version, sizes, the file CRC, the index's
// fields, every blob's header and checksum (blob.ts memoryHeader) and its shape against the
// manifest; a problem is a MemoryExportError naming what is wrong. it calls no Node API (in a
// browser io/crc32.ts computes the CRC itself).
//
// search: BM25 over words, as the bank on disk searches (LanceDB's BM25 over words), scored by
// bm25.ts's TokenBm25 (Okapi, k1 1.2, b 0.75) with each distinct word as a term id and every term
// counted (no document-frequency cut: a query of common words still retrieves, as the bank's does).
// words: the text lower-cased, split on anything that is not a letter or a digit (Unicode), less
// a short list of English function words (STOP_WORDS; LanceDB's 'simple' analyser removes stop
// words too). unlike it there is no stemming ('rivers' does not match 'river'), so ranks can differ
// from the bank's; ties go to the reference exported first.

import type { BankManifest, MemoryBank, SearchHit, StoredReference } from './bank.ts';
import { EngramError } from '../gpu/errors.ts';
import { crc32 } from '../io/crc32.ts';
import { fmtShape, MemoryBlobError, memoryHeader, type MemoryCodebooks } from './blob.ts';
import { TokenBm25 } from './bm25.ts';
import { decodeCodebooks, encodeCodebooks } from './quantize.ts';
import type { MemorySource } from './read.ts';

export const EXPORT_MAGIC = 'EMBX';
export const EXPORT_VERSION = 1;
const HEADER_BYTES = 16;
/** references exported when no limit is given; a larger bank needs an explicit one */
export const DEFAULT_EXPORT_LIMIT = 10_000;
/** references per list/get call while exporting */
const PAGE = 512;

/** An export cannot be written, or is malformed; says what and why. */
export class MemoryExportError extends EngramError {}

/** what exportBank reads of a bank (MemoryBank has it all) */
export type ExportableBank = Pick<MemoryBank, 'manifest' | 'codebooks' | 'count' | 'list' | 'get'>;

interface IndexRef {
  id: string;
  text: string;
  tokens: number[];
  offset: number;
  length: number;
}

interface ExportIndex {
  manifest: BankManifest;
  codebooks: { offset: number; length: number } | null;
  refs: IndexRef[];
}

const align4 = (n: number): number => Math.ceil(n / 4) * 4;

/**
 * The bank's references (id, text, tokens, memory blob), in insertion order, its manifest and its
 * codebooks (pq) as one file (layout in the header). `limit`: export the first `limit` references;
 * without it a bank of more than DEFAULT_EXPORT_LIMIT is refused (an export is held in memory whole).
 */
export async function exportBank(bank: ExportableBank, o: { limit?: number } = {}): Promise<Uint8Array> {
  const total = await bank.count();
  if (o.limit !== undefined && !(Number.isInteger(o.limit) && o.limit >= 0)) throw new MemoryExportError(`exportBank: limit must be a non-negative integer, got ${o.limit}`);
  if (o.limit === undefined && total > DEFAULT_EXPORT_LIMIT) {
    throw new MemoryExportError(`exportBank: the bank holds ${total} references, more than the ${DEFAULT_EXPORT_LIMIT} exported by default (an export is loaded whole into memory); pass limit to export the first ones`);
  }
  const n = Math.min(total, o.limit ?? total);
  const refs: StoredReference[] = [];
  for (let at = 0; at < n; at += PAGE) {
    const ids = (await bank.list({ offset: at, limit: Math.min(PAGE, n - at) })).map((r) => r.id);
    if (ids.length === 0) break; // removed while exporting
    const got = await bank.get(ids);
    if (got.length !== ids.length) throw new MemoryExportError(`exportBank: ${ids.length - got.length} references were removed from the bank while it was exported; export again`);
    refs.push(...got);
  }
  const m = bank.manifest;
  if (m.dtype === 'pq' && !bank.codebooks) throw new MemoryExportError(`exportBank: the bank's memories are product-quantised but it has no codebooks`);
  const books = m.dtype === 'pq' ? encodeCodebooks(bank.codebooks!) : null;

  // offsets depend on the index's length, which holds them: lay the data out from 0, then shift
  // every offset by the index's padded end (a fixed point: the shift is written as part of the JSON,
  // so grow it until the index fits)
  let at = 0;
  const place = (len: number): number => {
    const off = at;
    at = align4(at + len);
    return off;
  };
  const rel = refs.map((r) => place(r.memory.length));
  const relBooks = books ? place(books.length) : 0;
  const dataBytes = at;
  let start = align4(HEADER_BYTES);
  let json = '';
  for (;;) {
    const index: ExportIndex = {
      manifest: m,
      codebooks: books ? { offset: start + relBooks, length: books.length } : null,
      refs: refs.map((r, i) => ({ id: r.id, text: r.text, tokens: r.tokens, offset: start + rel[i]!, length: r.memory.length })),
    };
    json = JSON.stringify(index);
    const need = align4(HEADER_BYTES + new TextEncoder().encode(json).length);
    if (need <= start) break;
    start = need;
  }
  const jsonBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(start + dataBytes);
  for (let i = 0; i < 4; i++) out[i] = EXPORT_MAGIC.charCodeAt(i);
  const view = new DataView(out.buffer);
  view.setUint16(4, EXPORT_VERSION, true);
  out.set(jsonBytes, HEADER_BYTES);
  // the index is shorter than `start` when the fixed point overshot: pad it with spaces (still valid JSON)
  out.fill(0x20, HEADER_BYTES + jsonBytes.length, start);
  view.setUint32(8, start - HEADER_BYTES, true);
  refs.forEach((r, i) => out.set(r.memory, start + rel[i]!));
  if (books) out.set(books, start + relBooks);
  view.setUint32(12, crc32(out.subarray(HEADER_BYTES)), true);
  return out;
}

/** words left out of search: English function words (the usual stop list of full-text engines) */
const STOP_WORDS = new Set(
  'a an and are as at be but by for if in into is it no not of on or such that the their then there these they this to was will with'.split(' '),
);

/** the words BM25 sees: lower-cased, split on anything not a letter or digit, stop words left out */
export function words(text: string): string[] {
  return text
    .toLowerCase()
    .split(/[^\p{L}\p{N}]+/u)
    .filter((w) => w !== '' && !STOP_WORDS.has(w));
}

/** A bank export (exportBank) loaded into memory: a MemorySource for MemoryReader, with BM25 over words (header). */
export class StaticBank implements MemorySource {
  private readonly byId: Map<string, IndexRef>;
  private readonly vocab = new Map<string, number>();
  private readonly bm25: TokenBm25;

  private constructor(
    /** the bank's manifest, as exported */
    readonly manifest: BankManifest,
    /** dtype 'pq': the codebooks the memories' codes index */
    readonly codebooks: MemoryCodebooks | null,
    private readonly refs: readonly IndexRef[],
    private readonly bytes: Uint8Array,
  ) {
    this.byId = new Map(refs.map((r) => [r.id, r]));
    this.bm25 = new TokenBm25(refs.map((r) => this.termIds(r.text, true)));
  }

  /** Reads and verifies an export (every check of the header); `label` names it in errors. */
  static load(bytes: Uint8Array, label = 'bank export'): StaticBank {
    const fail = (what: string) => new MemoryExportError(`${label}: ${what}`);
    if (!(bytes instanceof Uint8Array)) throw fail(`expected a Uint8Array, got ${typeof bytes}`);
    if (bytes.length < HEADER_BYTES) throw fail(`${bytes.length} bytes is too short for an export's ${HEADER_BYTES}-byte header (truncated, or not a bank export)`);
    const magic = String.fromCharCode(...bytes.subarray(0, 4));
    if (magic !== EXPORT_MAGIC) throw fail(`not a bank export: magic ${JSON.stringify(magic)}, expected '${EXPORT_MAGIC}' (make one with exportBank)`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const version = view.getUint16(4, true);
    if (version !== EXPORT_VERSION) throw fail(`format version ${version} is not supported (this engram reads version ${EXPORT_VERSION})`);
    const J = view.getUint32(8, true);
    if (HEADER_BYTES + J > bytes.length) throw fail(`the header says the index takes ${J} bytes, but the file ends ${bytes.length - HEADER_BYTES} bytes after the header: truncated`);
    const stored = view.getUint32(12, true);
    const got = crc32(bytes.subarray(HEADER_BYTES));
    if (stored !== got) throw fail(`checksum mismatch (stored ${hex(stored)}, computed ${hex(got)}): the file is corrupt or truncated; export the bank again`);
    let index: ExportIndex;
    try {
      index = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(HEADER_BYTES, HEADER_BYTES + J))) as ExportIndex;
    } catch (e) {
      throw new MemoryExportError(`${label}: its index is not valid UTF-8 JSON (${(e as Error).message})`, { cause: e });
    }
    const m = checkManifest(index?.manifest, fail);
    // a copy aligned at 0, so that blobs (at offsets that are multiples of 4) decode without copying
    const own = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
    const slice = (off: unknown, len: unknown, what: string): Uint8Array => {
      if (!(Number.isInteger(off) && Number.isInteger(len) && (off as number) >= HEADER_BYTES + J && (len as number) > 0 && (off as number) + (len as number) <= bytes.length)) {
        throw fail(`${what} at offset ${String(off)}, ${String(len)} bytes, lies outside the data section [${HEADER_BYTES + J}, ${bytes.length})`);
      }
      return own.subarray(off as number, (off as number) + (len as number));
    };
    let codebooks: MemoryCodebooks | null = null;
    if (m.dtype === 'pq') {
      if (!index.codebooks) throw fail(`its memories are product-quantised (dtype pq) but it has no codebooks`);
      codebooks = decodeCodebooks(slice(index.codebooks.offset, index.codebooks.length, 'the codebooks'), `${label}, codebooks`);
    } else if (index.codebooks) throw fail(`it has codebooks, but its memories are ${m.dtype}, not pq`);
    const subvectors = codebooks?.books[0]?.subvectors;
    if (!Array.isArray(index.refs)) throw fail(`its index has no list of references`);
    const seen = new Set<string>();
    index.refs.forEach((r, i) => {
      const what = `reference ${i}${typeof r?.id === 'string' ? ` ('${r.id}')` : ''}`;
      if (typeof r?.id !== 'string' || r.id === '') throw fail(`${what}: its id must be a non-empty string`);
      if (seen.has(r.id)) throw fail(`${what}: the id is given twice`);
      seen.add(r.id);
      if (typeof r.text !== 'string') throw fail(`${what}: its text must be a string`);
      if (!Array.isArray(r.tokens) || !r.tokens.every((t) => Number.isInteger(t) && t >= 0)) throw fail(`${what}: its tokens must be a list of token ids`);
      let h;
      try {
        h = memoryHeader(slice(r.offset, r.length, `${what}'s memory`), `${label}, memory of ${what}`);
      } catch (e) {
        if (e instanceof MemoryBlobError) throw new MemoryExportError(e.message, { cause: e });
        throw e;
      }
      if (h.layers !== m.layers.length || h.kvHeads !== m.kvHeads || h.tokens !== m.tokens || h.headDim !== m.headDim || h.dtype !== m.dtype || h.subvectors !== subvectors) {
        throw fail(`${what}: its memory has shape ${fmtShape(h)}, but the bank holds ${fmtShape({ ...m, layers: m.layers.length, ...(subvectors ? { subvectors } : {}) })}`);
      }
    });
    return new StaticBank(m, codebooks, index.refs, own);
  }

  /** how many references it holds */
  get size(): number {
    return this.refs.length;
  }

  /** every reference's id and text, in the bank's insertion order */
  list(): { id: string; text: string }[] {
    return this.refs.map((r) => ({ id: r.id, text: r.text }));
  }

  /** throws unless the export was built for the model of this fingerprint (modelFingerprint, or modelFingerprintAsync in a browser) */
  checkModel(fingerprint: string): void {
    if (fingerprint !== this.manifest.fingerprint) {
      throw new MemoryExportError(`the bank export was built for model ${this.manifest.fingerprint}, not for this model (${fingerprint}): its memories are keys and values of that model; export a bank built with this one`);
    }
  }

  /** the k best references for `query` by BM25 over words (header), best first */
  async search(query: string, o: { k: number }): Promise<SearchHit[]> {
    if (!(Number.isInteger(o.k) && o.k > 0)) throw new MemoryExportError(`StaticBank.search: k must be a positive integer, got ${o.k}`);
    const hits = this.bm25.search(this.termIds(query, false), o.k, Infinity);
    return hits.map((h) => ({ id: this.refs[h.doc]!.id, text: this.refs[h.doc]!.text, score: h.score }));
  }

  /** the references with these ids, with their memory blobs (copies), in the order asked; unknown ids are left out */
  async get(ids: readonly string[]): Promise<StoredReference[]> {
    return ids.flatMap((id) => {
      const r = this.byId.get(id);
      return r ? [{ id: r.id, text: r.text, tokens: [...r.tokens], memory: this.bytes.slice(r.offset, r.offset + r.length) }] : [];
    });
  }

  /** a text's words as term ids; a query's unknown words get none (they match nothing) */
  private termIds(text: string, add: boolean): number[] {
    const out: number[] = [];
    for (const w of words(text)) {
      let id = this.vocab.get(w);
      if (id === undefined && add) this.vocab.set(w, (id = this.vocab.size));
      if (id !== undefined) out.push(id);
    }
    return out;
  }
}

/**
 * modelFingerprint (write.ts: sha256 over config.json, model.safetensors and tokenizer.json) with
 * WebCrypto, which browsers and Node both have (write.ts's uses node:crypto)
 */
export async function modelFingerprintAsync(files: Readonly<Record<string, Uint8Array>>): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new EngramError('modelFingerprintAsync: no WebCrypto here (a browser has it only in a secure context: https or localhost)');
  const sha = async (b: Uint8Array): Promise<Uint8Array> => new Uint8Array(await subtle.digest('SHA-256', b as Uint8Array<ArrayBuffer>));
  const parts: Uint8Array[] = [];
  for (const name of ['config.json', 'model.safetensors', 'tokenizer.json']) {
    const f = files[name];
    if (!f) throw new EngramError(`modelFingerprintAsync: the checkpoint has no ${name}`);
    parts.push(new TextEncoder().encode(name), await sha(f));
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return Array.from(await sha(all), (b) => b.toString(16).padStart(2, '0')).join('');
}

function checkManifest(m: BankManifest | undefined, fail: (what: string) => MemoryExportError): BankManifest {
  if (!m || typeof m !== 'object') throw fail(`its index has no manifest`);
  if (typeof m.fingerprint !== 'string' || m.fingerprint === '') throw fail(`the manifest's fingerprint must be a non-empty string`);
  if (!Array.isArray(m.layers) || m.layers.length === 0 || !m.layers.every((l) => Number.isInteger(l) && l >= 0)) throw fail(`the manifest's layers must be a non-empty list of layer indices, got ${JSON.stringify(m.layers)}`);
  for (const key of ['kvHeads', 'tokens', 'headDim'] as const) if (!(Number.isInteger(m[key]) && m[key] > 0)) throw fail(`the manifest's ${key} must be a positive integer, got ${JSON.stringify(m[key])}`);
  if (m.dtype !== 'bf16' && m.dtype !== 'f32' && m.dtype !== 'pq') throw fail(`the manifest's dtype must be 'bf16', 'f32' or 'pq', got ${JSON.stringify(m.dtype)}`);
  return m;
}

const hex = (x: number): string => `0x${x.toString(16).padStart(8, '0')}`;
