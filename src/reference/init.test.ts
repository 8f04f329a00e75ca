import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { fillNormal, fillUniform, mulhi32, normalFromWords, philox2x32, randomWords } from './init.ts';

test('reference philox2x32-10 matches the Random123 known-answer vectors', () => {
  // kat_vectors: philox2x32 10 <ctr0> <ctr1> <key> -> <out0> <out1>
  assert.deepEqual(philox2x32(0, 0, 0), [0xff1dae59, 0x6cd10df2]);
  assert.deepEqual(philox2x32(0xffffffff, 0xffffffff, 0xffffffff), [0x2c3f628b, 0xab4fd7ad]);
  assert.deepEqual(philox2x32(0x243f6a88, 0x85a308d3, 0x13198a2e), [0xdd7ce038, 0xf62a4c12]);
});

test('reference mulhi32 is the high word of the exact product', () => {
  const rng = new Rng(7);
  const edge = [0, 1, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0xd256d193];
  const vals = [...edge, ...Array.from({ length: 200 }, () => Math.floor(rng.next() * 2 ** 32))];
  for (const a of vals) {
    for (const b of edge.concat(vals.slice(edge.length, edge.length + 20))) {
      assert.equal(mulhi32(a, b), Number((BigInt(a) * BigInt(b)) >> 32n), `mulhi32(${a}, ${b})`);
    }
  }
});

test('reference counter: words of c split into (c mod 2^32, c div 2^32)', () => {
  assert.deepEqual(randomWords(5, 2 ** 32 + 7), philox2x32(7, 1, 5));
  assert.deepEqual(randomWords(5, 2 ** 53 - 1), philox2x32(0xffffffff, 2 ** 21 - 1, 5));
});

test('reference streams: offsets, extremes and moments', () => {
  const a = fillNormal(10, { std: 2, mean: 1, seed: 3, offset: 2 ** 40 });
  const b = fillNormal(4, { std: 2, mean: 1, seed: 3, offset: 2 ** 40 + 6 });
  assert.deepEqual([...a.slice(6)], [...b]);
  // the extreme words stay finite: u1 in (0, 1)
  assert.ok(Number.isFinite(normalFromWords(0, 0)) && normalFromWords(0, 0) < -6);
  assert.ok(Math.abs(normalFromWords(0xffffffff, 0x80000000)) < 1e-4);
  const n = 20000;
  const z = fillNormal(n, { std: 1, seed: 11 });
  const mean = z.reduce((s, x) => s + x, 0) / n;
  const sd = Math.sqrt(z.reduce((s, x) => s + (x - mean) ** 2, 0) / n);
  assert.ok(Math.abs(mean) < 0.03 && Math.abs(sd - 1) < 0.03, `mean ${mean} std ${sd}`);
  const u = fillUniform(n, { lo: -2, hi: 3, seed: 11 });
  assert.ok(u.every((x) => x >= -2 && x < 3));
  const um = u.reduce((s, x) => s + x, 0) / n;
  assert.ok(Math.abs(um - 0.5) < 0.05, `uniform mean ${um}`);
});
