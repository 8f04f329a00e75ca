// the decode-attention reference against the attention reference: row b's keys as one
// sequence (its last key the token's own, the others a prefix) give the same output.

import { test } from 'node:test';
import { assertClose } from '../testing/allclose.ts';
import { Rng } from '../testing/rng.ts';
import { attentionForward } from './attention.ts';
import { decodeAttention, decodeKeyRows, type DecodeDims } from './decode_attention.ts';

test('decode attention = attention over the row\'s keys as a prefix and one sequence key', () => {
  const rng = new Rng(5);
  const d: DecodeDims = { B: 3, NH: 4, NKV: 2, HS: 6, S: 12, F: 4 };
  const rows: [number, number][] = [
    [2, 5],
    [0, 1],
    [4, 8],
  ];
  const { B, NH, NKV, HS, S } = d;
  const q = Array.from({ length: B * NH * HS }, () => rng.normal());
  const k = Array.from({ length: B * S * NKV * HS }, () => rng.normal());
  const v = Array.from({ length: B * S * NKV * HS }, () => rng.normal());
  const got = decodeAttention(q, k, v, rows, d);
  for (let b = 0; b < B; b++) {
    const keys = decodeKeyRows(d, ...rows[b]!);
    const gather = (x: number[], rs: number[]) => rs.flatMap((r) => x.slice((b * S + r) * NKV * HS, (b * S + r + 1) * NKV * HS));
    const pre = keys.slice(0, -1);
    const last = keys.slice(-1);
    const want = attentionForward(q.slice(b * NH * HS, (b + 1) * NH * HS), gather(k, last), gather(v, last), gather(k, pre), gather(v, pre), { B: 1, T: 1, NH, NKV, HS, P: pre.length });
    assertClose(`row ${b}`, got.subarray(b * NH * HS, (b + 1) * NH * HS), want.out, 1e-12);
  }
});
