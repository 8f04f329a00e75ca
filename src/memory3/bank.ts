// the memory bank: an on-disk store of references and their encoded explicit memories (Memory³, spec
// shared/specs/memory3.md §1, §2), over LanceDB, so that it can outgrow RAM.
//
// what a bank is. a LanceDB database (a local folder by default; the same code opens one on object storage,
// `s3://bucket/path`, `gs://...`, `az://...`, uri handed to lancedb.connect as is, credentials through
// `storageOptions` or the usual environment variables) holding one table, `refs`, with a row per reference:
//   id      utf8, not null          the reference's id: given by the caller or a random UUID (stable: it is
//                                   stored, never recomputed)
//   seq     int64, not null         insertion order: max(previous + 1, wall clock in µs), so list() can page
//                                   in the order references were added, across restarts
//   text    utf8, not null          the reference text; BM25 full-text index (`text_idx`)
//   tokens  list<int32>, not null   its token ids, as the model encoded it
//   memory  binary, not null        the encoded sparse K/V memory (memory3/blob.ts: header, CRC, bf16/f32)
//   vector  fixed_size_list<float32>[vectorDim], not null   only in a bank made with `vectorDim`: a dense
//                                   retrieval key (e.g. from the model's own hidden states); then every
//                                   reference has one
// plus a BTREE index on id (`id_idx`) for get/remove/duplicate checks. a bank of product-quantised memories
// (dtype 'pq', memory3/quantize.ts) has a second table, `codebooks`, one row holding the codebook set its
// codes index; it is written before `refs` is created, and the manifest records its sha256, so a bank never
// reads codes against other codebooks (open() verifies the hash). the codebooks never change after creation.
//
// the manifest: what model the bank was built for (BankModel: the caller's fingerprint of weights and
// tokenizer, the memory layers, KV heads, tokens per head, head dim, dtype, vectorDim) is stored as JSON in
// the `refs` table's schema metadata under `engram.memory_bank`. why there and not in a bank.json beside
// the table: it is written by the same atomic commit that creates the table, so a bank cannot exist without
// its manifest nor the manifest drift from the data; and it works unchanged on object storage, which has no
// atomic tmp+rename. the manifest never changes after creation: a bank opened for another model (another
// fingerprint, or the same weights with other memory dims) is refused with an error naming both, asking
// for a rebuild with this model, because its memories are K/V of the other model's layers.
//
// search. BM25 over `text` with LanceDB's full-text index (tokenizer 'simple': lower-cased, ASCII-folded,
// English stemming, stop words removed; the query is matched term by term, OR, never parsed as a query
// language), top k (default 5, the paper's number of memories per chunk). with a query vector (bank made
// with vectorDim), BM25 and a cosine nearest-neighbour search (exact, flat) each give their top
// max(50, 10k), fused by reciprocal rank fusion, score(d) = Σ_lists 1 / (60 + rank_list(d)), rank from 1
// (Cormack et al. 2009's k = 60): rank-based, so BM25's unbounded scores and cosine distances need no
// calibration against each other; a reference found by one list only still counts. hits carry their
// score: BM25's, or the fused one. `exclude` drops ids before ranking (the paper's evaluation filter drops
// references that overlap the question). equal scores are ranked by id: short statements often tie
// (a country's name and one more word), and LanceDB breaks ties by where rows are stored, so a reference
// removed and added back (stored last) would trade places with its ties and the top k would change;
// BM25 reads 16 hits past k for this (ties reaching further are cut where LanceDB cuts them).
//
// changes are visible to the very next search. add() and remove() are each one LanceDB commit; the
// connection reads with readConsistencyInterval 0 (every read checks for a newer version, so a search in
// a server process sees a fact that `engram memory add` committed from another process). new rows are not
// in the full-text index yet, and LanceDB's search covers them anyway with a flat scan of the unindexed
// rows (BM25 statistics over both); removed rows are masked by deletion vectors at once, indexed or not.
// the scan's cost grows with the unindexed rows, so once
// `reindexAfter` (default 256) rows are unindexed, add() rebuilds the two indexes (reindex()). BM25 over
// the mix needs care (LanceDB 0.37, measured): an indexed row is scored with the index's own corpus
// statistics, an unindexed row with statistics that include it; and when the index covers no row at all,
// every match gets the same score, whatever its terms (the right fact ranked anywhere). so add() also
// rebuilds when the index is empty (the first add to a bank) and when more rows are unindexed than
// indexed; both together cost O(n) over a bank's growth (rebuilds at about 1, 2, 4, ... rows).
//
// why rebuild and not LanceDB's optimize(): optimize() = compaction + pruning + incremental index update,
// and Lance compaction merges every fragment under 1M rows, i.e. here it rewrites every stored memory
// blob for a single added reference. createIndex(replace) reads only the indexed column (text or id), never the
// blobs. optimize() stays available for maintenance (reclaims the space of removed references and prunes
// old versions), knowing that it rewrites the bank.
//
// crash safety. every write is a new LanceDB version, committed by writing its manifest last; a process
// killed mid-write leaves data files no version refers to, and the bank opens at the previous version
// (bank.test.ts kills a child in the middle of a large add). creation is two steps (the table with its
// manifest, then the indexes); open() creates missing indexes, so a crash between them is healed.
//
// costs: an add() of one reference is a duplicate check, a commit and an index check; a bulk add is
// mostly JS (checksums, Arrow conversion); reindex() reads the text and id columns of every row;
// optimize() rewrites the whole bank. readConsistencyInterval 0 is one version check per read (on
// object storage, one request per read). the bench suite `explicit` measures the write rate
// (bank_write_refs_s). every write leaves a version behind (a small manifest file); optimize() prunes those
// older than `olderThan` (LanceDB's default: 7 days). the vector search is exact (no ANN index): it reads
// the whole vector column, fine to about 10^6 references.
//
// concurrency: LanceDB serialises commits, so several writers are safe, but add()'s duplicate-id check is
// check-then-write: two processes adding the same id at once can both succeed. one writer at a time is
// the supported use.

import { createHash, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as lancedb from '@lancedb/lancedb';
import * as arrow from 'apache-arrow';
import { EngramError } from '../gpu/errors.ts';
import { fmtShape, MemoryBlobError, memoryHeader, type MemoryCodebooks, type MemoryDType } from './blob.ts';
import { decodeCodebooks, encodeCodebooks } from './quantize.ts';

/** what a bank's memories were computed by and with: the bank refuses any other model */
export interface BankModel {
  /** identifies the model weights + tokenizer (computed by the caller, e.g. a hash) */
  fingerprint: string;
  /** memory layer indices (their count is the L of every stored memory) */
  layers: readonly number[];
  kvHeads: number;
  /** tokens kept per (layer, KV head) */
  tokens: number;
  headDim: number;
  dtype: MemoryDType;
  /** length of the dense retrieval vector; absent: a BM25-only bank */
  vectorDim?: number;
}

/** BankModel as stored in the bank (format version, creation time) */
export interface BankManifest {
  format: number;
  fingerprint: string;
  layers: number[];
  kvHeads: number;
  tokens: number;
  headDim: number;
  dtype: MemoryDType;
  vectorDim: number | null;
  /** dtype 'pq': the sha256 (hex) of the codebook set in the `codebooks` table; otherwise null or absent */
  codebooks?: string | null;
  createdAt: string;
}

export interface BankOpenOptions {
  model: BankModel;
  /** create the bank when there is none (default false: a missing bank is an error) */
  create?: boolean;
  /** rebuild the indexes once this many rows are unindexed (default 256; Infinity: never automatically) */
  reindexAfter?: number;
  /** LanceDB storage options (object-storage credentials, endpoint, ...) */
  storageOptions?: Record<string, string>;
  /** creating a bank of dtype 'pq': the codebooks its memories are coded with (quantize.ts trainMemoryCodebooks) */
  codebooks?: MemoryCodebooks;
}

/** a reference to add */
export interface NewReference {
  /** absent: a random UUID */
  id?: string;
  text: string;
  tokens: readonly number[];
  /** encoded sparse memory (encodeMemory), of the bank's shape */
  memory: Uint8Array;
  /** dense retrieval key, required (and only allowed) in a bank with vectorDim */
  vector?: Float32Array;
}

/** a stored reference with its memory blob */
export interface StoredReference {
  id: string;
  text: string;
  tokens: number[];
  memory: Uint8Array;
}

export interface SearchHit {
  id: string;
  text: string;
  /** BM25 score, or the reciprocal-rank-fusion score when a vector was given */
  score: number;
}

export interface SearchOptions {
  /** how many hits (default 5) */
  k?: number;
  /** query vector (bank with vectorDim): fuse BM25 with cosine nearest neighbours by RRF */
  vector?: Float32Array;
  /** ids never to return */
  exclude?: readonly string[];
}

/** A bank cannot be opened, or an operation on it was given bad input; says which and why. */
export class MemoryBankError extends EngramError {}

export const BANK_TABLE = 'refs';
export const BANK_FORMAT = 1;
const MANIFEST_KEY = 'engram.memory_bank';
export const CODEBOOK_TABLE = 'codebooks';
/** reciprocal rank fusion constant (Cormack, Clarke, Büttcher 2009) */
export const RRF_K = 60;
const MAX_ID_LENGTH = 256;
/** ids per SQL IN list */
const IN_CHUNK = 512;
/** a BM25 search reads this many hits past the k asked for, to rank references tied with the k-th by id */
const TIE_DEPTH = 16;
/** blob bytes per Arrow record batch: well under Arrow's 2 GiB per binary column */
const BATCH_BYTES = 256 * 2 ** 20;

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const isRemote = (uri: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(uri);
const sqlString = (s: string): string => `'${s.replaceAll("'", "''")}'`;
const inList = (ids: readonly string[]): string => ids.map(sqlString).join(', ');
const chunks = <T>(a: readonly T[], n: number): T[][] => Array.from({ length: Math.ceil(a.length / n) }, (_, i) => a.slice(i * n, (i + 1) * n));
const isPositiveInt = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 1;

function manifestOf(model: BankModel, codebooks: string | null = null): BankManifest {
  return {
    format: BANK_FORMAT,
    fingerprint: model.fingerprint,
    layers: [...model.layers],
    kvHeads: model.kvHeads,
    tokens: model.tokens,
    headDim: model.headDim,
    dtype: model.dtype,
    vectorDim: model.vectorDim ?? null,
    codebooks,
    createdAt: new Date().toISOString(),
  };
}

function checkModel(model: BankModel): void {
  const fail = (what: string) => new MemoryBankError(`MemoryBank.open: model.${what}`);
  if (typeof model?.fingerprint !== 'string' || model.fingerprint === '') throw fail(`fingerprint must be a non-empty string`);
  if (!Array.isArray(model.layers) || model.layers.length < 1 || !model.layers.every((l) => Number.isInteger(l) && l >= 0)) {
    throw fail(`layers must be a non-empty list of layer indices, got ${JSON.stringify(model.layers)}`);
  }
  for (const key of ['kvHeads', 'tokens', 'headDim'] as const) if (!isPositiveInt(model[key])) throw fail(`${key} must be a positive integer, got ${model[key]}`);
  if (model.dtype !== 'bf16' && model.dtype !== 'f32' && model.dtype !== 'pq') throw fail(`dtype must be 'bf16', 'f32' or 'pq', got '${String(model.dtype)}'`);
  if (model.vectorDim !== undefined && !isPositiveInt(model.vectorDim)) throw fail(`vectorDim must be a positive integer, got ${model.vectorDim}`);
}

/** the table schema for `m` (see the header comment); the manifest rides in its metadata */
function bankSchema(m: BankManifest): arrow.Schema {
  const fields: arrow.Field[] = [
    new arrow.Field('id', new arrow.Utf8(), false),
    new arrow.Field('seq', new arrow.Int64(), false),
    new arrow.Field('text', new arrow.Utf8(), false),
    new arrow.Field('tokens', new arrow.List(new arrow.Field('item', new arrow.Int32(), false)), false),
    new arrow.Field('memory', new arrow.Binary(), false),
  ];
  if (m.vectorDim !== null) fields.push(new arrow.Field('vector', new arrow.FixedSizeList(m.vectorDim, new arrow.Field('item', new arrow.Float32(), false)), false));
  return new arrow.Schema(fields, new Map([[MANIFEST_KEY, JSON.stringify(m)]]));
}

/** a row as LanceDB's toArray() gives it back */
interface Row {
  id: string;
  seq: bigint;
  text: string;
  tokens: { toArray(): Int32Array };
  memory: Uint8Array;
  _score?: number;
  _distance?: number;
}

export class MemoryBank {
  private closed = false;
  /** the last seq this process handed out (lazily read from the table) */
  private lastSeq: bigint | undefined;

  private constructor(
    /** where the bank lives, as given to open() */
    readonly uri: string,
    /** the model the bank was built for */
    readonly manifest: BankManifest,
    private readonly db: lancedb.Connection,
    private readonly table: lancedb.Table,
    private readonly schema: arrow.Schema,
    private readonly reindexAfter: number,
    /** dtype 'pq': the codebooks the stored codes index (decodeMemory needs them) */
    readonly codebooks: MemoryCodebooks | null,
  ) {}

  /**
   * Opens the bank at `uri` (a local folder, or an object-storage URI such as s3://bucket/bank) for
   * `o.model`, creating it when `o.create` is set and there is none. Throws a MemoryBankError when there is
   * no bank and `create` is not set, when it is not a memory bank, and when it was built for another model.
   */
  /**
   * The manifest of the bank at `uri` (the model and memory dims it was built for), or null when
   * there is no bank there (no folder, or no refs table); a table that is not a bank throws.
   */
  static async manifestAt(uri: string, o: { storageOptions?: Record<string, string> } = {}): Promise<BankManifest | null> {
    // lancedb.connect would create a missing local folder
    if (!isRemote(uri) && !existsSync(uri)) return null;
    const db = await lancedb.connect(uri, o.storageOptions ? { storageOptions: o.storageOptions } : {});
    try {
      if (!(await db.tableNames()).includes(BANK_TABLE)) return null;
      const table = await db.openTable(BANK_TABLE);
      try {
        return readManifest(uri, (await table.schema()).metadata.get(MANIFEST_KEY));
      } finally {
        table.close();
      }
    } finally {
      db.close();
    }
  }

  /** the model a manifest describes: what open() needs to open the bank without knowing its model beforehand */
  static modelOf(m: BankManifest): BankModel {
    return {
      fingerprint: m.fingerprint,
      layers: m.layers,
      kvHeads: m.kvHeads,
      tokens: m.tokens,
      headDim: m.headDim,
      dtype: m.dtype,
      ...(m.vectorDim !== null ? { vectorDim: m.vectorDim } : {}),
    };
  }

  static async open(uri: string, o: BankOpenOptions): Promise<MemoryBank> {
    checkModel(o.model);
    const reindexAfter = o.reindexAfter ?? 256;
    if (!(reindexAfter >= 1)) throw new MemoryBankError(`MemoryBank.open: reindexAfter must be >= 1, got ${reindexAfter}`);
    const missing = () =>
      new MemoryBankError(`no memory bank at ${uri}: ${isRemote(uri) || existsSync(uri) ? `it has no '${BANK_TABLE}' table` : 'no such folder'}; pass create: true to make one`);
    // lancedb.connect creates a local folder: do not leave one behind for a bank that is not there
    if (!o.create && !isRemote(uri) && !existsSync(uri)) throw missing();
    const db = await lancedb.connect(uri, { readConsistencyInterval: 0, ...(o.storageOptions ? { storageOptions: o.storageOptions } : {}) });
    try {
      let table: lancedb.Table;
      if ((await db.tableNames()).includes(BANK_TABLE)) table = await db.openTable(BANK_TABLE);
      else if (!o.create) throw missing();
      else {
        let hash: string | null = null;
        if (o.model.dtype === 'pq') {
          if (!o.codebooks) throw new MemoryBankError(`MemoryBank.open: creating a bank of dtype 'pq' needs its codebooks (quantize.ts trainMemoryCodebooks)`);
          const bytes = encodeCodebooks(o.codebooks);
          hash = sha256(bytes);
          // first the codebooks, then the refs table whose manifest names them: a crash between leaves no bank
          const books = await db.createTable(CODEBOOK_TABLE, [{ data: bytes }], { mode: 'overwrite', schema: new arrow.Schema([new arrow.Field('data', new arrow.Binary(), false)]) });
          books.close();
        }
        try {
          table = await db.createEmptyTable(BANK_TABLE, bankSchema(manifestOf(o.model, hash)), { mode: 'create' });
        } catch (e) {
          // another process created it in the meantime: open theirs (and check it below)
          if (!(await db.tableNames()).includes(BANK_TABLE)) throw e;
          table = await db.openTable(BANK_TABLE);
        }
      }
      const schema = await table.schema();
      const manifest = readManifest(uri, schema.metadata.get(MANIFEST_KEY));
      compareModel(uri, manifest, o.model);
      const bank = new MemoryBank(uri, manifest, db, table, schema, reindexAfter, manifest.dtype === 'pq' ? await readCodebooks(uri, db, manifest) : null);
      await bank.ensureIndexes();
      return bank;
    } catch (e) {
      db.close();
      throw e;
    }
  }

  /**
   * Adds references in one commit (all or none) and returns their ids, in order. Every reference is
   * checked first: non-empty text, at least one token id, a memory blob that decodes (header, size,
   * checksum) to this bank's shape, a vector of vectorDim finite values with a non-zero norm where the
   * bank has vectors, an id that is new to the bank and to the batch. `deferIndex`: leave the indexes
   * alone even past reindexAfter (bulk builds: call reindex() at the end; the first rows of a bank whose
   * index covers none are indexed all the same).
   */
  async add(refs: readonly NewReference[], o: { deferIndex?: boolean } = {}): Promise<string[]> {
    this.live('add');
    if (!Array.isArray(refs)) throw new MemoryBankError(`MemoryBank.add: expected an array of references`);
    if (refs.length === 0) return [];
    const ids = refs.map((r, i) => {
      if (r.id === undefined) return randomUUID();
      checkId(r.id, `MemoryBank.add: reference ${i}`);
      return r.id;
    });
    const seen = new Set<string>();
    for (const id of ids) {
      if (seen.has(id)) throw new MemoryBankError(`MemoryBank.add: id '${id}' appears twice in the batch`);
      seen.add(id);
    }
    refs.forEach((r, i) => this.checkReference(r, `MemoryBank.add: reference ${i} ('${ids[i]}')`));
    const taken = await this.existing(ids);
    if (taken.length) {
      const shown = taken.slice(0, 5).map((id) => `'${id}'`).join(', ');
      throw new MemoryBankError(`MemoryBank.add: ${taken.length} id(s) already in the bank: ${shown}${taken.length > 5 ? ', ...' : ''}; remove them first to replace them`);
    }

    // one Arrow table of ≤ BATCH_BYTES record batches, one LanceDB commit
    let seq = await this.nextSeq();
    const rows = refs.map((r, i) => {
      const row: Record<string, unknown> = { id: ids[i], seq, text: r.text, tokens: Int32Array.from(r.tokens), memory: r.memory };
      if (this.manifest.vectorDim !== null) row.vector = r.vector;
      seq += 1n;
      return row;
    });
    this.lastSeq = seq - 1n;
    const parts: arrow.Table[] = [];
    let begin = 0;
    let bytes = 0;
    for (let i = 0; i <= rows.length; i++) {
      if (i === rows.length || (bytes > 0 && bytes + refs[i]!.memory.length > BATCH_BYTES)) {
        parts.push(lancedb.makeArrowTable(rows.slice(begin, i), { schema: this.schema }));
        begin = i;
        bytes = 0;
      }
      if (i < rows.length) bytes += refs[i]!.memory.length;
    }
    const data = parts.length === 1 ? parts[0]! : parts[0]!.concat(...parts.slice(1));
    await this.table.add(data);
    await this.reindexIfStale(o.deferIndex ?? false);
    return ids;
  }

  /** Removes the references with these ids (unknown ids are ignored); returns how many were removed. */
  async remove(ids: readonly string[]): Promise<number> {
    this.live('remove');
    ids.forEach((id, i) => checkId(id, `MemoryBank.remove: id ${i}`));
    let n = 0;
    for (const part of chunks([...new Set(ids)], IN_CHUNK)) n += (await this.table.delete(`id IN (${inList(part)})`)).numDeletedRows;
    return n;
  }

  /** References in insertion order, `limit` (default 100) of them from `offset` (default 0). */
  async list(o: { offset?: number; limit?: number } = {}): Promise<{ id: string; text: string }[]> {
    this.live('list');
    const offset = o.offset ?? 0;
    const limit = o.limit ?? 100;
    if (!Number.isInteger(offset) || offset < 0) throw new MemoryBankError(`MemoryBank.list: offset must be a non-negative integer, got ${offset}`);
    if (!Number.isInteger(limit) || limit < 0) throw new MemoryBankError(`MemoryBank.list: limit must be a non-negative integer, got ${limit}`);
    if (limit === 0) return [];
    // (the sort column must be among the selected ones: LanceDB cannot plan the sort otherwise)
    const q = this.table.query().select(['id', 'text', 'seq']).orderBy({ columnName: 'seq', ascending: true }).limit(limit);
    if (offset) q.offset(offset);
    const rows = (await q.toArray()) as Row[];
    return rows.map((r) => ({ id: r.id, text: r.text }));
  }

  /** How many references the bank holds. */
  async count(): Promise<number> {
    this.live('count');
    return this.table.countRows();
  }

  /** References, and how many of them the full-text index does not cover yet (searched by a scan). */
  async stats(): Promise<{ references: number; unindexed: number }> {
    this.live('stats');
    const text = await this.table.indexStats('text_idx');
    return { references: await this.table.countRows(), unindexed: text?.numUnindexedRows ?? 0 };
  }

  /** The stored references with these ids, with their memory blobs, in the order asked; unknown ids are left out. */
  async get(ids: readonly string[]): Promise<StoredReference[]> {
    this.live('get');
    ids.forEach((id, i) => checkId(id, `MemoryBank.get: id ${i}`));
    const found = new Map<string, StoredReference>();
    for (const part of chunks([...new Set(ids)], IN_CHUNK)) {
      const rows = (await this.table.query().where(`id IN (${inList(part)})`).select(['id', 'text', 'tokens', 'memory']).toArray()) as Row[];
      // copy the blob out of the Arrow batch, so that holding one memory does not pin the whole batch
      for (const r of rows) found.set(r.id, { id: r.id, text: r.text, tokens: Array.from(r.tokens.toArray()), memory: r.memory.slice() });
    }
    return ids.flatMap((id) => found.get(id) ?? []);
  }

  /**
   * The k (default 5) references that best match `query`: BM25 over their text; with `vector`, BM25 and
   * cosine nearest neighbours fused by reciprocal rank fusion (header comment). Sees every add/remove
   * committed before it, from this process or another.
   */
  async search(query: string, o: SearchOptions = {}): Promise<SearchHit[]> {
    this.live('search');
    const k = o.k ?? 5;
    if (!isPositiveInt(k)) throw new MemoryBankError(`MemoryBank.search: k must be a positive integer, got ${k}`);
    if (typeof query !== 'string') throw new MemoryBankError(`MemoryBank.search: query must be a string`);
    const exclude = o.exclude ?? [];
    exclude.forEach((id, i) => checkId(id, `MemoryBank.search: exclude ${i}`));
    const where = exclude.length ? `id NOT IN (${inList([...new Set(exclude)])})` : undefined;
    if (o.vector !== undefined) this.checkVector(o.vector, 'MemoryBank.search: the query vector');
    // TIE_DEPTH more than asked for, so that references tied with the k-th are all seen and ranked by id
    const depth = o.vector ? Math.max(50, 10 * k) : k + TIE_DEPTH;

    let bm25: Row[] = [];
    if (query.trim() !== '') {
      const q = this.table.search(new lancedb.MatchQuery(query, 'text')).select(['id', 'text', '_score']).limit(depth);
      if (where) q.where(where);
      bm25 = ((await q.toArray()) as Row[]).sort((a, b) => b._score! - a._score! || compareIds(a.id, b.id));
    }
    if (!o.vector) return bm25.slice(0, k).map((r) => ({ id: r.id, text: r.text, score: r._score! }));

    const vq = this.table.vectorSearch(o.vector).column('vector').distanceType('cosine').select(['id', 'text', '_distance']).limit(depth);
    if (where) vq.where(where);
    const near = ((await vq.toArray()) as Row[]).sort((a, b) => a._distance! - b._distance! || compareIds(a.id, b.id));
    return fuse([bm25, near], k);
  }

  /**
   * Rebuilds the full-text and id indexes over every row. Reads only the text and id columns (never the
   * blobs); add() calls it once reindexAfter rows are unindexed.
   */
  async reindex(): Promise<void> {
    this.live('reindex');
    await this.table.createIndex('text', { config: lancedb.Index.fts(), replace: true });
    await this.table.createIndex('id', { config: lancedb.Index.btree(), replace: true });
  }

  /**
   * LanceDB maintenance: compacts the data files (materialising removals: the space of removed memories
   * comes back), prunes versions older than `olderThan` (default: LanceDB's 7 days), brings the indexes
   * up to date. Rewrites every fragment of under 1M rows, i.e. in practice the whole bank: run it rarely.
   */
  async optimize(o: { olderThan?: Date } = {}): Promise<void> {
    this.live('optimize');
    await this.table.optimize(o.olderThan ? { cleanupOlderThan: o.olderThan } : {});
    await this.reindex();
  }

  /** Releases the table and the connection; the bank cannot be used afterwards. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.table.close();
    this.db.close();
  }

  // ---- internals ----

  private live(op: string): void {
    if (this.closed) throw new MemoryBankError(`MemoryBank.${op}: the bank at ${this.uri} is closed`);
  }

  private checkReference(r: NewReference, where: string): void {
    const fail = (what: string) => new MemoryBankError(`${where}: ${what}`);
    if (typeof r?.text !== 'string' || r.text.trim() === '') throw fail(`text must be a non-empty string`);
    if (!r.tokens || typeof r.tokens.length !== 'number' || r.tokens.length < 1) throw fail(`tokens must hold at least one token id`);
    for (const t of r.tokens) if (!Number.isInteger(t) || t < 0 || t > 0x7fffffff) throw fail(`token id ${t} is not an integer in [0, 2^31)`);
    let h;
    try {
      h = memoryHeader(r.memory, 'memory');
    } catch (e) {
      if (e instanceof MemoryBlobError) throw fail(e.message);
      throw e;
    }
    const m = this.manifest;
    const subvectors = this.codebooks?.books[0]?.subvectors;
    if (h.layers !== m.layers.length || h.kvHeads !== m.kvHeads || h.tokens !== m.tokens || h.headDim !== m.headDim || h.dtype !== m.dtype || h.subvectors !== subvectors) {
      throw fail(`memory has shape ${fmtShape(h)}, but this bank holds ${fmtShape({ ...m, layers: m.layers.length, ...(subvectors ? { subvectors } : {}) })}`);
    }
    if (m.vectorDim === null) {
      if (r.vector !== undefined) throw fail(`has a vector, but this bank was made without vectors (no vectorDim)`);
    } else {
      if (r.vector === undefined) throw fail(`has no vector; every reference of this bank needs one of ${m.vectorDim} values`);
      this.checkVector(r.vector, `${where}: vector`);
    }
  }

  private checkVector(v: Float32Array, what: string): void {
    const dim = this.manifest.vectorDim;
    if (dim === null) throw new MemoryBankError(`${what}: this bank was made without vectors (no vectorDim)`);
    if (!(v instanceof Float32Array) || v.length !== dim) throw new MemoryBankError(`${what} must be a Float32Array of ${dim} values, got ${v?.length ?? typeof v}`);
    let norm = 0;
    for (const x of v) {
      if (!Number.isFinite(x)) throw new MemoryBankError(`${what} holds a non-finite value (${x})`);
      norm += x * x;
    }
    if (norm === 0) throw new MemoryBankError(`${what} is all zeros: cosine similarity is undefined for it`);
  }

  /** the ids among `ids` that the bank holds */
  private async existing(ids: readonly string[]): Promise<string[]> {
    const out: string[] = [];
    for (const part of chunks(ids, IN_CHUNK)) {
      const rows = (await this.table.query().where(`id IN (${inList(part)})`).select(['id']).toArray()) as Row[];
      for (const r of rows) out.push(r.id);
    }
    return out;
  }

  /** the next insertion stamp: after everything in the bank, and no earlier than now (µs) */
  private async nextSeq(): Promise<bigint> {
    if (this.lastSeq === undefined) {
      const top = (await this.table.query().select(['seq']).orderBy({ columnName: 'seq', ascending: false }).limit(1).toArray()) as Row[];
      this.lastSeq = top[0]?.seq ?? 0n;
    }
    const now = BigInt(Date.now()) * 1000n;
    return now > this.lastSeq ? now : this.lastSeq + 1n;
  }

  private async ensureIndexes(): Promise<void> {
    const have = new Set((await this.table.listIndices()).map((i) => i.name));
    if (!have.has('text_idx')) await this.table.createIndex('text', { config: lancedb.Index.fts() });
    if (!have.has('id_idx')) await this.table.createIndex('id', { config: lancedb.Index.btree() });
  }

  /**
   * Rebuilds the indexes when the scan of unindexed rows costs too much or skews BM25 (header comment):
   * when the full-text index covers no row while the bank has some (then LanceDB's BM25 gives every
   * match the same score), even under `deferred`; otherwise when reindexAfter rows or more are unindexed,
   * or more rows are unindexed than indexed (a small index's corpus statistics would score the indexed
   * part).
   */
  private async reindexIfStale(deferred: boolean): Promise<void> {
    const text = await this.table.indexStats('text_idx');
    const id = await this.table.indexStats('id_idx');
    if (!text || !id) return this.reindex();
    const { numIndexedRows: indexed, numUnindexedRows: unindexed } = text;
    const empty = indexed === 0 && unindexed > 0;
    const stale = unindexed >= this.reindexAfter || unindexed > indexed || id.numUnindexedRows >= this.reindexAfter;
    if (empty || (!deferred && stale)) await this.reindex();
  }
}

/** reciprocal rank fusion of ranked lists (best first): Σ 1/(RRF_K + rank), rank from 1; top k */
function fuse(lists: readonly Row[][], k: number): SearchHit[] {
  const hits = new Map<string, SearchHit>();
  for (const list of lists) {
    list.forEach((r, i) => {
      const h = hits.get(r.id) ?? { id: r.id, text: r.text, score: 0 };
      h.score += 1 / (RRF_K + i + 1);
      hits.set(r.id, h);
    });
  }
  return [...hits.values()].sort((a, b) => b.score - a.score || compareIds(a.id, b.id)).slice(0, k);
}

/** the order among equal scores: by id, not by where a row happens to be stored (a removed and re-added reference moves to the end) */
function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** throws (naming `where`) unless id is one a bank accepts: a non-empty string, not too long, no control characters */
export function checkId(id: unknown, where: string): asserts id is string {
  if (typeof id !== 'string' || id === '') throw new MemoryBankError(`${where}: an id must be a non-empty string, got ${JSON.stringify(id)}`);
  if (id.length > MAX_ID_LENGTH) throw new MemoryBankError(`${where}: id of ${id.length} characters is longer than ${MAX_ID_LENGTH}`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(id)) throw new MemoryBankError(`${where}: id ${JSON.stringify(id)} holds a control character`);
}

function readManifest(uri: string, json: string | undefined): BankManifest {
  if (json === undefined) throw new MemoryBankError(`${uri} is not an engram memory bank: its '${BANK_TABLE}' table has no '${MANIFEST_KEY}' manifest`);
  let m: BankManifest;
  try {
    m = JSON.parse(json) as BankManifest;
  } catch (e) {
    throw new MemoryBankError(`memory bank at ${uri}: its manifest is not valid JSON`, { cause: e });
  }
  if (m.format !== BANK_FORMAT) throw new MemoryBankError(`memory bank at ${uri} has format ${m.format}; this engram reads format ${BANK_FORMAT}`);
  return m;
}

/** throws unless the bank's manifest describes the same model and memory shape as `model` */
function compareModel(uri: string, bank: BankManifest, model: BankModel): void {
  const advice = 'its memories are keys and values of that model and mean nothing to another one; rebuild it with this model';
  if (bank.fingerprint !== model.fingerprint) {
    throw new MemoryBankError(`memory bank at ${uri} was built for model ${bank.fingerprint}, not for this model (${model.fingerprint}): ${advice}`);
  }
  const want = manifestOf(model);
  const diff = (['layers', 'kvHeads', 'tokens', 'headDim', 'dtype', 'vectorDim'] as const).filter((key) => JSON.stringify(bank[key]) !== JSON.stringify(want[key]));
  if (diff.length) {
    const show = (m: BankManifest) => diff.map((key) => `${key} ${JSON.stringify(m[key])}`).join(', ');
    throw new MemoryBankError(
      `memory bank at ${uri} (model ${bank.fingerprint}) holds memories with ${show(bank)}, but this model asks for ${show(want)}: rebuild it with this model`,
    );
  }
}

/** a pq bank's codebooks, verified against the hash its manifest records */
async function readCodebooks(uri: string, db: lancedb.Connection, m: BankManifest): Promise<MemoryCodebooks> {
  const fail = (what: string) => new MemoryBankError(`memory bank at ${uri}: ${what}; the bank cannot be read (rebuild it)`);
  if (!(await db.tableNames()).includes(CODEBOOK_TABLE)) throw fail(`its memories are product-quantised but it has no '${CODEBOOK_TABLE}' table`);
  const t = await db.openTable(CODEBOOK_TABLE);
  try {
    const rows = (await t.query().toArray()) as { data: Uint8Array }[];
    if (rows.length !== 1) throw fail(`its '${CODEBOOK_TABLE}' table has ${rows.length} rows, not 1`);
    const bytes = new Uint8Array(rows[0]!.data);
    const hash = sha256(bytes);
    if (hash !== m.codebooks) throw fail(`its codebooks hash to ${hash}, but its manifest names ${m.codebooks}`);
    return decodeCodebooks(bytes, `memory bank at ${uri}, codebooks`);
  } finally {
    t.close();
  }
}
