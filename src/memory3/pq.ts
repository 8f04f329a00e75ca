// product quantisation (PQ) of Memory³ explicit memories' key/value vectors (the headDim-long rows of
// SparseMemory.k / .v, memory3/blob.ts): a lossy codec that shrinks a memory further than bf16.
//
// what PQ is here. a dim-vector is split into `subvectors` (M) consecutive parts of D = dim/M dims; each
// part is stored as the index of the nearest of `centroids` (C <= 256) centroids learned for that part's
// sub-space, so one byte per part: M bytes per vector instead of 2·dim in bf16 (at dim 80, M = 10: 10 bytes
// instead of 160). decoding concatenates the M chosen centroids. a codebook (PqCodebook) holds the (M, C, D)
// centroids, 4·C·dim bytes (80 KiB at C = 256, dim 80), shared by every memory it encodes.
//
// what Memory³ used (spec shared/specs/memory3.md, App. B): faiss `OPQ20x80-Residual2x14-PQ8x10`, i.e. a
// learned 80×80 rotation (OPQ), a coarse quantiser of two 40-dim halves with 16,384 centroids each (a 28-bit
// cell id in 4 bytes), and a PQ of the residual (8 sub-vectors of 10 dims, 1024 centroids, 10-bit codes): 14
// bytes per 80-dim vector. this file is plain PQ: no rotation, no residual coarse quantiser, byte codes. a
// documented, simpler choice: one codebook, one byte per code, no bit packing; the rotation and the residual
// stage can come later on top of the same kernel (both are k-means on other inputs).
//
// training (trainPq): Lloyd's k-means in every sub-space, on at most `maxTrain` vectors sampled without
// replacement (seeded). init: per sub-space, the first C distinct (bitwise) sub-vectors of a seeded random
// order of the training vectors; fewer distinct sub-vectors than C repeat them (duplicate centroids are
// harmless: ties go to the lowest index, so the copies stay empty). each iteration assigns every training
// sub-vector to its nearest centroid ON THE GPU (kernels/kmeans: all M sub-spaces in one dispatch) and
// updates the means ON THE HOST (float64 sums, one pass over the training set); a centroid left without
// vectors is re-seeded with the training sub-vector currently farthest from its own centroid (distinct ones
// for several empty centroids of a sub-space, while there are rows). the mean squared error never grows
// from one iteration to the next (up to f32 rounding), which onIteration reports.
// encoding (pqEncode) runs the same kernel; decoding (pqDecode) is a host gather.
//
// codebook bytes (encodeCodebook / decodeCodebook; little-endian):
//   offset size
//    0     4    magic 'EPQ1'
//    4     2    u16 format version (1)
//    6     2    u16 reserved, 0
//    8     4    u32 dim
//   12     4    u32 subvectors (M)
//   16     4    u32 centroids (C)
//   20     4    u32 CRC-32 (IEEE, io/crc32.ts) of bytes [0, 20) then the data [24, end)
//   24          f32 centroids, (M, C, dim/M)
// a damaged codebook (short, wrong magic or version, impossible sizes, truncated, trailing bytes, checksum
// mismatch) is a PqError naming where it came from and what is wrong.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { KMEANS_MAX_D, kmeansAssign } from '../kernels/kmeans/kmeans.ts';
import { Rng } from '../testing/rng.ts';
import { crc32 } from '../io/crc32.ts';

export interface PqCodebook {
  /** length of the vectors coded */
  dim: number;
  /** M: parts per vector, one code byte each */
  subvectors: number;
  /** C: centroids per sub-space (at most 256) */
  centroids: number;
  /** (subvectors, centroids, dim/subvectors) */
  data: Float32Array;
}

export interface TrainPqOptions {
  dim: number;
  subvectors: number;
  /** centroids per sub-space; default 256, at most 256 (a code is one byte) */
  centroids?: number;
  /** Lloyd iterations (assign, then update); default 15; 0 returns the initial codebook */
  iters?: number;
  /** seed of the sample and the init; default 0 */
  seed?: number;
  /** train on at most this many vectors, sampled without replacement; default 65536 */
  maxTrain?: number;
  /**
   * called with iter = 0 .. iters and the codebook's mean squared error per component on the training
   * sample after `iter` update steps (iter 0: the initial codebook); costs one more assignment at the end
   */
  onIteration?: (iter: number, meanSquaredError: number) => void;
}

/** A PQ input, codebook or codebook blob is malformed; says which and why. */
export class PqError extends EngramError {}

/** most centroids per sub-space: a code is one byte */
export const PQ_MAX_CENTROIDS = 256;
export const PQ_MAGIC = 'EPQ1';
export const PQ_VERSION = 1;
export const PQ_HEADER_BYTES = 24;

/** vectors per kernel dispatch (also bounded by the adapter's storage binding size) */
const CHUNK_ROWS = 65536;
/** empty centroids of one sub-space up to which the farthest rows are found by scans, not a sort */
const FEW_EMPTY = 8;

// ---------------------------------------------------------------- checks

type Fail = (what: string) => PqError;

function checkSizes(fail: Fail, dim: number, M: number, C: number): number {
  if (!Number.isInteger(dim) || dim < 1 || dim > 0xffffffff) throw fail(`dim ${dim} must be a positive integer`);
  if (!Number.isInteger(M) || M < 1) throw fail(`subvectors ${M} must be a positive integer`);
  if (dim % M !== 0) throw fail(`dim ${dim} is not a multiple of subvectors ${M}: each vector splits into ${M} equal parts`);
  const D = dim / M;
  if (D > KMEANS_MAX_D) throw fail(`dim/subvectors = ${dim}/${M} = ${D} dims per part; at most ${KMEANS_MAX_D} (use more subvectors)`);
  if (!Number.isInteger(C) || C < 1 || C > PQ_MAX_CENTROIDS) throw fail(`centroids ${C} must be an integer in [1, ${PQ_MAX_CENTROIDS}] (a code is one byte)`);
  return D;
}

/** the sub-vector dims D of a well-formed codebook */
function checkBook(op: string, book: PqCodebook): number {
  const fail: Fail = (what) => new PqError(`${op}: codebook ${what}`);
  const D = checkSizes(fail, book.dim, book.subvectors, book.centroids);
  const n = book.centroids * book.dim;
  if (!(book.data instanceof Float32Array) || book.data.length !== n) {
    throw fail(`data must be a Float32Array of (subvectors, centroids, dim/subvectors) = (${book.subvectors}, ${book.centroids}, ${D}) = ${n} values, got ${book.data?.length ?? 'none'}`);
  }
  return D;
}

/** the number of vectors in `vectors`, checked: a Float32Array of whole finite dim-vectors */
function checkVectors(op: string, vectors: Float32Array, dim: number): number {
  if (!(vectors instanceof Float32Array)) throw new PqError(`${op}: vectors must be a Float32Array (n × ${dim}, row-major)`);
  if (vectors.length % dim !== 0) throw new PqError(`${op}: vectors has ${vectors.length} values, not a multiple of dim ${dim} (n × dim, row-major)`);
  for (let i = 0; i < vectors.length; i++) {
    if (!Number.isFinite(vectors[i]!)) throw new PqError(`${op}: vector ${Math.floor(i / dim)} has a non-finite value ${vectors[i]} at component ${i % dim}`);
  }
  return vectors.length / dim;
}

function checkInt(op: string, name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new PqError(`${op}: ${name} ${v} must be an integer >= ${min}`);
  return v;
}

// ---------------------------------------------------------------- GPU assignment

/** training (or encoded) vectors on the GPU in chunks, and the nearest centroid of each of their parts */
class Assigner {
  private constructor(
    private readonly gpu: Gpu,
    /** per chunk: x (rows, M, D), codes (rows, M), dist (rows, M) */
    private readonly chunks: { x: Tensor; codes: Tensor; dist: Tensor }[],
    private readonly cents: Tensor,
    private readonly n: number,
    private readonly M: number,
  ) {}

  static async create(gpu: Gpu, vectors: Float32Array, n: number, M: number, C: number, D: number): Promise<Assigner> {
    const dim = M * D;
    const bind = gpu.device.limits.maxStorageBufferBindingSize;
    const rows = Math.max(1, Math.min(CHUNK_ROWS, Math.floor(bind / (4 * dim))));
    const made: Tensor[] = [];
    const keep = (t: Tensor) => (made.push(t), t);
    try {
      const cents = keep(await gpu.tensor([M, C, D], 'f32', 'pq_centroids'));
      const chunks: { x: Tensor; codes: Tensor; dist: Tensor }[] = [];
      for (let r0 = 0; r0 < n; r0 += rows) {
        const nr = Math.min(rows, n - r0);
        chunks.push({
          x: keep(await gpu.tensorFrom(vectors.subarray(r0 * dim, (r0 + nr) * dim), [nr, M, D], 'f32', 'pq_x')),
          codes: keep(await gpu.tensor([nr, M], 'u32', 'pq_codes')),
          dist: keep(await gpu.tensor([nr, M], 'f32', 'pq_dist')),
        });
      }
      return new Assigner(gpu, chunks, cents, n, M);
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
  }

  /** codes (n, M) and, when asked, squared distances (n, M) against `centroids` (M, C, D) */
  async run(centroids: Float32Array, withDist: boolean): Promise<{ codes: Uint32Array; dist: Float32Array }> {
    this.gpu.write(this.cents, centroids);
    for (const c of this.chunks) await kmeansAssign(this.gpu, { codes: c.codes, dist: c.dist }, { x: c.x, centroids: this.cents });
    const codes = new Uint32Array(this.n * this.M);
    const dist = new Float32Array(withDist ? this.n * this.M : 0);
    let at = 0;
    for (const c of this.chunks) {
      codes.set(await this.gpu.read(c.codes), at);
      if (withDist) dist.set(await this.gpu.read(c.dist), at);
      at += c.codes.size;
    }
    return { codes, dist };
  }

  dispose(): void {
    this.cents.dispose();
    for (const c of this.chunks) for (const t of [c.x, c.codes, c.dist]) t.dispose();
  }
}

// ---------------------------------------------------------------- training

/** at most maxTrain rows of vectors, sampled without replacement (kept in their order) */
function sampleRows(vectors: Float32Array, n: number, dim: number, maxTrain: number, rng: Rng): { train: Float32Array; nt: number } {
  if (n <= maxTrain) return { train: vectors, nt: n };
  const idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) idx[i] = i;
  for (let i = 0; i < maxTrain; i++) {
    const j = i + rng.int(n - i);
    const t = idx[i]!;
    idx[i] = idx[j]!;
    idx[j] = t;
  }
  const chosen = idx.subarray(0, maxTrain).sort();
  const train = new Float32Array(maxTrain * dim);
  chosen.forEach((r, i) => train.set(vectors.subarray(r * dim, (r + 1) * dim), i * dim));
  return { train, nt: maxTrain };
}

/** per sub-space, the first C bitwise-distinct sub-vectors of a random order of the rows (repeated if fewer) */
function initCentroids(train: Float32Array, nt: number, M: number, C: number, D: number, rng: Rng): Float32Array {
  const dim = M * D;
  const order = rng.shuffle(Array.from({ length: nt }, (_, r) => r));
  const bits = new Uint32Array(train.buffer, train.byteOffset, train.length);
  const data = new Float32Array(M * C * D);
  for (let m = 0; m < M; m++) {
    const seen = new Set<string>();
    const picked: number[] = [];
    for (const r of order) {
      if (picked.length === C) break;
      const at = r * dim + m * D;
      const key = bits.subarray(at, at + D).join(',');
      if (!seen.has(key)) {
        seen.add(key);
        picked.push(r);
      }
    }
    for (let c = 0; c < C; c++) {
      const at = picked[c % picked.length]! * dim + m * D;
      data.set(train.subarray(at, at + D), (m * C + c) * D);
    }
  }
  return data;
}

/** the k rows of sub-space m farthest from their centroids (largest dist first, ties -> lower row), repeated if k > nt */
function farthestRows(dist: Float32Array, nt: number, M: number, m: number, k: number): number[] {
  const at = (r: number) => dist[r * M + m]!;
  let rows: number[];
  if (k <= FEW_EMPTY) {
    rows = [];
    const taken = new Set<number>();
    for (let j = 0; j < Math.min(k, nt); j++) {
      let best = -1;
      for (let r = 0; r < nt; r++) if (!taken.has(r) && (best < 0 || at(r) > at(best))) best = r;
      taken.add(best);
      rows.push(best);
    }
  } else {
    rows = Array.from({ length: nt }, (_, r) => r)
      .sort((a, b) => at(b) - at(a) || a - b)
      .slice(0, k);
  }
  return Array.from({ length: k }, (_, j) => rows[j % rows.length]!);
}

/** Lloyd's update on the host: every centroid to the mean of its rows; empty ones re-seeded (farthestRows) */
function updateCentroids(data: Float32Array, train: Float32Array, codes: Uint32Array, dist: Float32Array, nt: number, M: number, C: number, D: number): void {
  const dim = M * D;
  const sums = new Float64Array(M * C * D);
  const counts = new Uint32Array(M * C);
  for (let r = 0; r < nt; r++) {
    for (let m = 0; m < M; m++) {
      const mc = m * C + codes[r * M + m]!;
      counts[mc]!++;
      const src = r * dim + m * D;
      const dst = mc * D;
      for (let d = 0; d < D; d++) sums[dst + d]! += train[src + d]!;
    }
  }
  for (let m = 0; m < M; m++) {
    const empty: number[] = [];
    for (let c = 0; c < C; c++) {
      const mc = m * C + c;
      const k = counts[mc]!;
      if (k === 0) empty.push(c);
      else for (let d = 0; d < D; d++) data[mc * D + d] = sums[mc * D + d]! / k;
    }
    if (empty.length === 0) continue;
    farthestRows(dist, nt, M, m, empty.length).forEach((r, j) => {
      const at = r * dim + m * D;
      data.set(train.subarray(at, at + D), (m * C + empty[j]!) * D);
    });
  }
}

/**
 * Learns a PQ codebook of `vectors` (n × dim, row-major) by Lloyd's k-means in each of the `subvectors`
 * sub-spaces: assignment on the GPU (kmeansAssign), mean updates on the host (see the file header).
 */
export async function trainPq(gpu: Gpu, vectors: Float32Array, o: TrainPqOptions): Promise<PqCodebook> {
  const op = 'trainPq';
  const { dim, subvectors: M } = o;
  const C = o.centroids ?? PQ_MAX_CENTROIDS;
  const D = checkSizes((what) => new PqError(`${op}: ${what}`), dim, M, C);
  const iters = checkInt(op, 'iters', o.iters ?? 15, 0);
  const maxTrain = checkInt(op, 'maxTrain', o.maxTrain ?? 65536, 1);
  const seed = o.seed ?? 0;
  if (!Number.isFinite(seed)) throw new PqError(`${op}: seed ${seed} must be a finite number`);
  const n = checkVectors(op, vectors, dim);
  if (n === 0) throw new PqError(`${op}: no training vectors (vectors is empty)`);

  const rng = new Rng(seed);
  const { train, nt } = sampleRows(vectors, n, dim, maxTrain, rng);
  const data = initCentroids(train, nt, M, C, D, rng);
  const book: PqCodebook = { dim, subvectors: M, centroids: C, data };
  if (iters === 0 && !o.onIteration) return book;

  const asg = await Assigner.create(gpu, train, nt, M, C, D);
  try {
    for (let it = 0; it <= iters; it++) {
      if (it === iters && !o.onIteration) break; // the last assignment only measures
      const { codes, dist } = await asg.run(data, true);
      if (o.onIteration) {
        let s = 0;
        for (const v of dist) s += v;
        o.onIteration(it, s / (nt * dim));
      }
      if (it < iters) updateCentroids(data, train, codes, dist, nt, M, C, D);
    }
  } finally {
    asg.dispose();
  }
  return book;
}

// ---------------------------------------------------------------- codec

/** The PQ codes of `vectors` (n × book.dim, row-major): n × subvectors bytes, row-major, on the GPU. */
export async function pqEncode(gpu: Gpu, book: PqCodebook, vectors: Float32Array): Promise<Uint8Array> {
  const op = 'pqEncode';
  const D = checkBook(op, book);
  const n = checkVectors(op, vectors, book.dim);
  if (n === 0) return new Uint8Array(0);
  const asg = await Assigner.create(gpu, vectors, n, book.subvectors, book.centroids, D);
  try {
    return Uint8Array.from((await asg.run(book.data, false)).codes);
  } finally {
    asg.dispose();
  }
}

/** The vectors (n × book.dim, row-major) that `codes` (n × subvectors bytes) stand for. */
export function pqDecode(book: PqCodebook, codes: Uint8Array): Float32Array {
  const op = 'pqDecode';
  const D = checkBook(op, book);
  const M = book.subvectors;
  const C = book.centroids;
  if (!(codes instanceof Uint8Array)) throw new PqError(`${op}: codes must be a Uint8Array (n × ${M} bytes)`);
  if (codes.length % M !== 0) throw new PqError(`${op}: ${codes.length} code bytes is not a multiple of subvectors ${M} (n × subvectors)`);
  const out = new Float32Array((codes.length / M) * book.dim);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i]!;
    if (c >= C) throw new PqError(`${op}: code ${c} of vector ${Math.floor(i / M)}, part ${i % M} is out of range: the codebook has ${C} centroids`);
    const at = ((i % M) * C + c) * D;
    out.set(book.data.subarray(at, at + D), i * D);
  }
  return out;
}

// ---------------------------------------------------------------- codebook bytes

const bookCrc = (b: Uint8Array): number => crc32(b.subarray(PQ_HEADER_BYTES), crc32(b.subarray(0, 20)));
const hex = (x: number): string => `0x${x.toString(16).padStart(8, '0')}`;

/** A codebook's bytes (layout in the file header). */
export function encodeCodebook(book: PqCodebook): Uint8Array {
  checkBook('encodeCodebook', book);
  const out = new Uint8Array(PQ_HEADER_BYTES + 4 * book.data.length);
  const view = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) out[i] = PQ_MAGIC.charCodeAt(i);
  view.setUint16(4, PQ_VERSION, true);
  view.setUint32(8, book.dim, true);
  view.setUint32(12, book.subvectors, true);
  view.setUint32(16, book.centroids, true);
  book.data.forEach((v, i) => view.setFloat32(PQ_HEADER_BYTES + 4 * i, v, true));
  view.setUint32(20, bookCrc(out), true);
  return out;
}

/** Parses and verifies a codebook's bytes; `where` names them in errors (a file, a bank). */
export function decodeCodebook(bytes: Uint8Array, where: string): PqCodebook {
  const fail: Fail = (what) => new PqError(`${where}: ${what}`);
  if (!(bytes instanceof Uint8Array)) throw fail(`expected a Uint8Array of PQ codebook bytes, got ${typeof bytes}`);
  if (bytes.length < PQ_HEADER_BYTES) throw fail(`${bytes.length} bytes is too short for a PQ codebook: the header alone takes ${PQ_HEADER_BYTES} (truncated?)`);
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== PQ_MAGIC) throw fail(`not a PQ codebook: magic ${JSON.stringify(magic)}, expected '${PQ_MAGIC}'`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(4, true);
  if (version !== PQ_VERSION) throw fail(`PQ codebook format version ${version} is not supported (this engram reads version ${PQ_VERSION})`);
  if (view.getUint16(6, true) !== 0) throw fail(`reserved header bytes 6-7 are not zero: the header is corrupt`);
  const dim = view.getUint32(8, true);
  const subvectors = view.getUint32(12, true);
  const centroids = view.getUint32(16, true);
  checkSizes((what) => fail(`${what}: the header is corrupt`), dim, subvectors, centroids);
  const want = PQ_HEADER_BYTES + 4 * centroids * dim;
  const sizes = `(dim ${dim}, subvectors ${subvectors}, centroids ${centroids})`;
  if (bytes.length < want) throw fail(`truncated: ${bytes.length} bytes, a PQ codebook of ${sizes} takes ${want}`);
  if (bytes.length > want) throw fail(`${bytes.length - want} trailing bytes after the ${want} that a PQ codebook of ${sizes} takes`);
  const stored = view.getUint32(20, true);
  const got = bookCrc(bytes);
  if (stored !== got) throw fail(`checksum mismatch (stored ${hex(stored)}, computed ${hex(got)}): the PQ codebook is corrupt`);
  const data = new Float32Array(centroids * dim);
  for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(PQ_HEADER_BYTES + 4 * i, true);
  return { dim, subvectors, centroids, data };
}
