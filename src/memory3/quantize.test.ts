// product-quantised memories: codebooks per memory layer and K/V (trainMemoryCodebooks), memories recoded
// against them (quantizeMemories), the pq blob (encode, decode with the codebooks, refusal without them or
// with others, corruption), the codebook set's bytes, and a bank of pq memories: it needs its codebooks to
// be created, stores them beside its references, verifies them by hash on open, and its reader decodes.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import * as lancedb from '@lancedb/lancedb';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { CODEBOOK_TABLE, MemoryBank } from './bank.ts';
import { decodeMemory, encodeMemory, memoryBytes, type SparseMemory } from './blob.ts';
import { decodeCodebooks, encodeCodebooks, quantizeMemories, trainMemoryCodebooks } from './quantize.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-quantize-'));
after(() => rm(root, { recursive: true, force: true }));

const SHAPE = { layers: 2, kvHeads: 2, tokens: 3, headDim: 16 };

/** n memories whose vectors are drawn from `distinct` fixed vectors per (layer, K/V) (so small codebooks code them exactly) */
function memories(n: number, distinct: number, seed: number): SparseMemory[] {
  const rng = new Rng(seed);
  const { layers: L, kvHeads: H, tokens: T, headDim: D } = SHAPE;
  const pool = Array.from({ length: 2 * L }, () => Array.from({ length: distinct }, () => Float32Array.from(rng.normals(D))));
  return Array.from({ length: n }, () => {
    const k = new Float32Array(L * H * T * D);
    const v = new Float32Array(L * H * T * D);
    for (let l = 0; l < L; l++) {
      for (let r = 0; r < H * T; r++) {
        k.set(pool[2 * l]![rng.int(distinct)]!, (l * H * T + r) * D);
        v.set(pool[2 * l + 1]![rng.int(distinct)]!, (l * H * T + r) * D);
      }
    }
    return { ...SHAPE, dtype: 'f32' as const, k, v, positions: Uint32Array.from({ length: L * H * T }, () => rng.int(300)) };
  });
}

test('memories of few distinct vectors quantise exactly; the pq blob round-trips with its codebooks and only with them', async () => {
  const gpu = await testGpu();
  const mems = memories(20, 6, 1);
  const books = await trainMemoryCodebooks(gpu, mems, { subvectors: 4, centroids: 8, iters: 4 });
  assert.equal(books.books.length, 4);
  const q = await quantizeMemories(gpu, books, mems);
  for (const [i, m] of q.entries()) {
    assert.equal(m.dtype, 'pq');
    assert.deepEqual(m.k, mems[i]!.k);
    assert.deepEqual(m.v, mems[i]!.v);
    const blob = encodeMemory(m);
    assert.equal(blob.length, memoryBytes({ ...SHAPE, dtype: 'pq', subvectors: 4, positionBytes: 2 }));
    const back = decodeMemory(blob, 'blob', books);
    assert.deepEqual([back.k, back.v, back.codes, back.positions], [m.k, m.v, m.codes, m.positions]);
  }
  // 4 code bytes per 16-dim vector against 32 in bf16
  const bf16 = encodeMemory({ ...mems[0]!, dtype: 'bf16' }).length;
  assert.ok(encodeMemory(q[0]!).length < bf16 / 3, `${encodeMemory(q[0]!).length} vs ${bf16}`);
  const blob = encodeMemory(q[0]!);
  assert.throws(() => decodeMemory(blob, 'blob'), /blob: a product-quantised memory decodes only with its bank's codebooks/);
  const other = await trainMemoryCodebooks(gpu, mems, { subvectors: 2, centroids: 8, iters: 1 });
  assert.throws(() => decodeMemory(blob, 'blob', other), /do not fit the codebooks given/);
  const bad = blob.slice();
  bad[24] = 99; // M
  assert.throws(() => decodeMemory(bad, 'blob', books), /99 code bytes per vector is not in \[1, headDim 16\]/);
  assert.throws(() => encodeMemory({ ...mems[0]!, dtype: 'pq' }), /a pq memory needs subvectors/);
  // the codebook set's bytes
  const bytes = encodeCodebooks(books);
  assert.deepEqual(decodeCodebooks(bytes, 'set'), books);
  assert.throws(() => decodeCodebooks(bytes.subarray(0, bytes.length - 3), 'set'), /set, codebook 3|truncated/);
  const flipped = bytes.slice();
  flipped[bytes.length - 1]! ^= 1;
  assert.throws(() => decodeCodebooks(flipped, 'set'), /set, codebook 3/);
  assert.throws(() => decodeCodebooks(new Uint8Array(8), 'set'), /not a codebook set/);
});

test('on varied vectors, the quantisation error falls with more code bytes', async () => {
  const gpu = await testGpu();
  const mems = memories(40, 400, 2);
  const err = async (subvectors: number) => {
    const q = await quantizeMemories(gpu, await trainMemoryCodebooks(gpu, mems, { subvectors, centroids: 16, iters: 6 }), mems);
    let e = 0;
    let n = 0;
    q.forEach((m, i) => m.k.forEach((x, j) => ((e += (x - mems[i]!.k[j]!) ** 2), n++)));
    return e / n;
  };
  const [e2, e8] = [await err(2), await err(8)];
  assert.ok(e8 < e2 && e2 < 1, `${e8} < ${e2} < 1 (unit-variance data)`);
});

test('a pq bank: created with its codebooks, verified on open, read back through them', async () => {
  const gpu = await testGpu();
  const mems = memories(8, 5, 3);
  const books = await trainMemoryCodebooks(gpu, mems, { subvectors: 4, centroids: 8, iters: 3 });
  const q = await quantizeMemories(gpu, books, mems);
  const model = { fingerprint: 'pq-test', layers: [0, 1], kvHeads: 2, tokens: 3, headDim: 16, dtype: 'pq' as const };
  const dir = join(root, 'bank');
  await assert.rejects(MemoryBank.open(dir, { model, create: true }), /creating a bank of dtype 'pq' needs its codebooks/);
  const bank = await MemoryBank.open(dir, { model, create: true, codebooks: books });
  await bank.add(q.map((m, i) => ({ id: `r${i}`, text: `reference number ${i} about zebra${i}`, tokens: [1, 2, 3], memory: encodeMemory(m) })));
  // a memory coded with another code size, or not coded, is refused
  await assert.rejects(bank.add([{ text: 'x', tokens: [1], memory: encodeMemory(mems[0]!) }]), /holds \(L 2, 2, Hkv 2, T 3, D 16\) pq of 4 bytes/);
  bank.close();
  const again = await MemoryBank.open(dir, { model });
  assert.deepEqual(again.codebooks, books);
  const [r] = await again.get(['r5']);
  assert.deepEqual(decodeMemory(r!.memory, 'r5', again.codebooks!).k, q[5]!.k);
  again.close();
  // codebooks swapped under the bank: refused by hash
  const db = await lancedb.connect(dir);
  const other = encodeCodebooks(await trainMemoryCodebooks(gpu, mems, { subvectors: 4, centroids: 8, iters: 1, seed: 9 }));
  (await db.createTable(CODEBOOK_TABLE, [{ data: other }], { mode: 'overwrite' })).close();
  db.close();
  await assert.rejects(MemoryBank.open(dir, { model }), /its codebooks hash to [0-9a-f]+, but its manifest names [0-9a-f]+; the bank cannot be read/);
});
