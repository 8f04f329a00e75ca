import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EngramError } from '../gpu/errors.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { PqError, decodeCodebook, encodeCodebook, pqDecode, pqEncode, trainPq, type PqCodebook } from './pq.ts';

/** n vectors whose part m is one of `k` fixed random sub-vectors of sub-space m (every one used) */
function fromParts(n: number, dim: number, M: number, k: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const D = dim / M;
  const parts = Float32Array.from(rng.normals(M * k * D));
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < M; m++) {
      const c = i < k ? i : rng.int(k);
      out.set(parts.subarray((m * k + c) * D, (m * k + c + 1) * D), i * dim + m * D);
    }
  }
  return out;
}

/** n vectors: per sub-space one of k centres (fixed by centreSeed, spread 1 per component) plus noise */
function clustered(n: number, dim: number, M: number, k: number, noise: number, seed: number, centreSeed = 99): Float32Array {
  const D = dim / M;
  const centres = new Rng(centreSeed).normals(M * k * D);
  const rng = new Rng(seed);
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < M; m++) {
      const c = rng.int(k);
      for (let d = 0; d < D; d++) out[i * dim + m * D + d] = centres[(m * k + c) * D + d]! + noise * rng.normal();
    }
  }
  return out;
}

const mse = (a: Float32Array, b: Float32Array): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2;
  return s / a.length;
};

test('pq: as many centroids as distinct parts (or more, or more than vectors) reproduce the vectors exactly', async () => {
  const gpu = await testGpu();
  const x = fromParts(200, 16, 4, 10, 1);
  for (const centroids of [10, 16]) {
    const book = await trainPq(gpu, x, { dim: 16, subvectors: 4, centroids, iters: 3, seed: 2 });
    const codes = await pqEncode(gpu, book, x);
    assert.equal(codes.length, 200 * 4);
    assert.deepEqual(pqDecode(book, codes), x, `centroids ${centroids}`);
  }
  // fewer vectors than centroids (the default 256): the unused ones are copies
  const few = x.subarray(0, 5 * 16);
  const book = await trainPq(gpu, few, { dim: 16, subvectors: 4, iters: 2 });
  assert.equal(book.centroids, 256);
  assert.deepEqual(pqDecode(book, await pqEncode(gpu, book, few)), few);
  assert.deepEqual(await pqEncode(gpu, book, new Float32Array(0)), new Uint8Array(0));
  assert.deepEqual(pqDecode(book, new Uint8Array(0)), new Float32Array(0));
});

test('pq: clustered data: k-means error never grows, ends small and far below the initial codebook', async () => {
  const gpu = await testGpu();
  const o = { dim: 64, subvectors: 8, centroids: 16, seed: 3 };
  const noise = 0.05;
  const x = clustered(2000, 64, 8, 16, noise, 4);
  const errs: number[] = [];
  const its: number[] = [];
  const book = await trainPq(gpu, x, {
    ...o,
    iters: 15,
    onIteration: (it, e) => {
      its.push(it);
      errs.push(e);
    },
  });
  assert.deepEqual(its, Array.from({ length: 16 }, (_, i) => i), 'onIteration is called for iter 0..iters');
  for (let i = 1; i < errs.length; i++) assert.ok(errs[i]! <= errs[i - 1]! * (1 + 1e-5), `error grew at iteration ${i}: ${errs.join(', ')}`);
  const init = await trainPq(gpu, x, { ...o, iters: 0 });
  // held-out vectors from the same centres
  const test = clustered(500, 64, 8, 16, noise, 5);
  const errTrained = mse(pqDecode(book, await pqEncode(gpu, book, test)), test);
  const errInit = mse(pqDecode(init, await pqEncode(gpu, init, test)), test);
  assert.ok(Math.abs(errs[0]! - mse(pqDecode(init, await pqEncode(gpu, init, x)), x)) < 1e-5 * errs[0]!, 'iteration 0 reports the initial codebook');
  // the data's variance per component is about 1, the noise's 0.0025. Lloyd's from random data
  // points settles in a local minimum (some true centres shared by two centroids, others split),
  // so the error stays well above the noise: about 0.08 here
  assert.ok(errTrained < 0.15, `trained error ${errTrained}`);
  assert.ok(errTrained < 0.5 * errInit, `trained error ${errTrained} vs initial ${errInit}`);
  assert.ok(Math.abs(errs[15]! - mse(pqDecode(book, await pqEncode(gpu, book, x)), x)) < 1e-4 * errs[15]!, 'the last report is the returned codebook');
});

test('pq: maxTrain samples the training set; same seed, same codebook', async () => {
  const gpu = await testGpu();
  const x = clustered(600, 16, 2, 8, 0.1, 6);
  const o = { dim: 16, subvectors: 2, centroids: 8, iters: 4, maxTrain: 100, seed: 7 };
  const errs: number[] = [];
  const a = await trainPq(gpu, x, { ...o, onIteration: (_, e) => errs.push(e) });
  const b = await trainPq(gpu, x, o);
  assert.deepEqual(a, b);
  const c = await trainPq(gpu, x, { ...o, seed: 8 });
  assert.notDeepEqual(a.data, c.data);
  assert.equal(errs.length, 5);
});

test('pq: an empty cluster is re-seeded with the training sub-vector farthest from its centroid', async () => {
  const gpu = await testGpu();
  // six 2-D points, C = 3; seed 1 starts at c0 = (6,2), c1 = (4,0), c2 = (6,0). by hand (exact ties
  // -> lower index): step 1 gives (10/3,10/3), (2,2), (6,0); step 2 gives (2,4), (0,4), (16/3,2/3);
  // step 3 leaves c0 empty (p0 goes to c2, p2 to c1); the farthest point from its centroid is then
  // p2 = (0,6) (distance 4 to c1), so c0 = (0,6), c1 = (0,5), c2 = (5,1); step 4 settles at
  // (0,6), (0,4), (5,1), a fixed point. without the re-seed c0 would stay empty at (2,4).
  const x = Float32Array.from([4, 2, 4, 0, 0, 6, 0, 4, 6, 2, 6, 0]);
  const errs: number[] = [];
  const book = await trainPq(gpu, x, { dim: 2, subvectors: 1, centroids: 3, iters: 6, seed: 1, onIteration: (_, e) => errs.push(e) });
  assert.deepEqual(Array.from(book.data), [0, 6, 0, 4, 5, 1]);
  assert.deepEqual(Array.from((await trainPq(gpu, x, { dim: 2, subvectors: 1, centroids: 3, iters: 0, seed: 1 })).data), [6, 2, 4, 0, 6, 0]);
  assert.equal(errs[6], 8 / 12, `errors ${errs.join(', ')}`);
});

test('pq: codebook bytes round-trip; damage is a PqError naming where', async () => {
  const gpu = await testGpu();
  const book = await trainPq(gpu, fromParts(50, 12, 3, 6, 9), { dim: 12, subvectors: 3, centroids: 6, iters: 2 });
  const bytes = encodeCodebook(book);
  assert.equal(bytes.length, 24 + 4 * 6 * 12);
  assert.deepEqual(decodeCodebook(bytes, 'book.pq'), book);
  // from an unaligned view of a larger buffer
  const shifted = new Uint8Array(bytes.length + 3);
  shifted.set(bytes, 3);
  assert.deepEqual(decodeCodebook(shifted.subarray(3), 'shifted'), book);

  const bad = (b: Uint8Array, re: RegExp) => assert.throws(() => decodeCodebook(b, 'bank/pq.bin'), (e: Error) => e instanceof PqError && e instanceof EngramError && /^bank\/pq\.bin: /.test(e.message) && re.test(e.message));
  const edit = (f: (b: Uint8Array, v: DataView) => void) => {
    const b = bytes.slice();
    f(b, new DataView(b.buffer));
    return b;
  };
  bad(bytes.subarray(0, 10), /10 bytes is too short for a PQ codebook: the header alone takes 24/);
  bad(bytes.subarray(0, bytes.length - 4), /truncated: 308 bytes, a PQ codebook of \(dim 12, subvectors 3, centroids 6\) takes 312/);
  bad(Uint8Array.from([...bytes, 0]), /1 trailing bytes after the 312/);
  bad(edit((b) => (b[0] = 0x58)), /not a PQ codebook: magic "XPQ1", expected 'EPQ1'/);
  bad(edit((_, v) => v.setUint16(4, 2, true)), /format version 2 is not supported/);
  bad(edit((_, v) => v.setUint16(6, 1, true)), /reserved header bytes 6-7 are not zero/);
  bad(edit((_, v) => v.setUint32(12, 5, true)), /dim 12 is not a multiple of subvectors 5.*the header is corrupt/);
  bad(edit((_, v) => v.setUint32(16, 300, true)), /centroids 300 must be an integer in \[1, 256\].*the header is corrupt/);
  bad(edit((_, v) => v.setUint32(16, 5, true)), /trailing bytes/);
  bad(edit((b) => (b[100]! ^= 0x10)), /checksum mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\): the PQ codebook is corrupt/);
  bad(edit((b) => (b[21]! ^= 1)), /checksum mismatch/);
  assert.throws(() => decodeCodebook([1, 2] as unknown as Uint8Array, 'arr'), /arr: expected a Uint8Array/);
});

test('pq: bad inputs are PqErrors saying what is wrong', async () => {
  const gpu = await testGpu();
  const x = fromParts(20, 8, 2, 4, 10);
  const is = (re: RegExp) => (e: Error) => e instanceof PqError && re.test(e.message);
  const train = (v: Float32Array, o: Partial<Parameters<typeof trainPq>[2]>, re: RegExp) => assert.rejects(trainPq(gpu, v, { dim: 8, subvectors: 2, ...o }), is(re));
  await train(x, { subvectors: 3 }, /trainPq: dim 8 is not a multiple of subvectors 3/);
  await train(x, { subvectors: 0 }, /trainPq: subvectors 0 must be a positive integer/);
  await train(x, { dim: 0 }, /trainPq: dim 0 must be a positive integer/);
  await train(new Float32Array(514), { dim: 514, subvectors: 2 }, /514\/2 = 257 dims per part; at most 256 \(use more subvectors\)/);
  await train(x, { centroids: 257 }, /trainPq: centroids 257 must be an integer in \[1, 256\] \(a code is one byte\)/);
  await train(x, { centroids: 0 }, /centroids 0 must be an integer in \[1, 256\]/);
  await train(x, { iters: -1 }, /trainPq: iters -1 must be an integer >= 0/);
  await train(x, { maxTrain: 0 }, /trainPq: maxTrain 0 must be an integer >= 1/);
  await train(x, { seed: NaN }, /trainPq: seed NaN must be a finite number/);
  await train(x.subarray(0, 20), {}, /trainPq: vectors has 20 values, not a multiple of dim 8/);
  await train(new Float32Array(0), {}, /trainPq: no training vectors/);
  const nan = x.slice();
  nan[8 * 3 + 5] = NaN;
  await train(nan, {}, /trainPq: vector 3 has a non-finite value NaN at component 5/);
  await train(Array.from(x) as unknown as Float32Array, {}, /trainPq: vectors must be a Float32Array/);

  const book = await trainPq(gpu, x, { dim: 8, subvectors: 2, centroids: 4, iters: 1 });
  await assert.rejects(pqEncode(gpu, book, x.subarray(0, 12)), is(/pqEncode: vectors has 12 values, not a multiple of dim 8/));
  const short: PqCodebook = { ...book, data: book.data.subarray(1) };
  await assert.rejects(pqEncode(gpu, short, x), is(/pqEncode: codebook data must be a Float32Array of \(subvectors, centroids, dim\/subvectors\) = \(2, 4, 4\) = 32 values, got 31/));
  await assert.rejects(pqEncode(gpu, { ...book, subvectors: 3 }, x), is(/pqEncode: codebook dim 8 is not a multiple of subvectors 3/));
  assert.throws(() => pqDecode(book, new Uint8Array(3)), is(/pqDecode: 3 code bytes is not a multiple of subvectors 2/));
  assert.throws(() => pqDecode(book, Uint8Array.from([0, 1, 2, 4])), is(/pqDecode: code 4 of vector 1, part 1 is out of range: the codebook has 4 centroids/));
  assert.throws(() => pqDecode(book, [0, 1] as unknown as Uint8Array), is(/pqDecode: codes must be a Uint8Array/));
  assert.throws(() => encodeCodebook({ ...book, centroids: 300 }), is(/encodeCodebook: codebook centroids 300 must be an integer in \[1, 256\]/));
});
