import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo, type DType } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/attention.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu, withMapping, type Mapping } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { attentionBackward, attentionFlops, attentionForward } from './attention.ts';

interface Case extends ref.AttentionDims {
  /** q magnitude (softmax stability) */
  mag?: number;
}

// awkward shapes: a single token; T not a multiple of any tile (37) and over two query blocks
// (130); two batch rows; grouped heads (4 over 2, 6 over 1) and plain multi-head; with and
// without a prefix, one longer than a CPU chunk of 8 keys (11); HS 16 and 64; large scores; no
// causal mask. only HS 16 and 64 are used so that lavapipe compiles few pipelines (dtypes are
// uniforms, not specializations), and HS 6 (a half vec4 slot) on the adapter's mapping only.
const CASES: Case[] = [
  { B: 1, T: 1, NH: 2, NKV: 1, HS: 16, P: 0 },
  { B: 2, T: 37, NH: 4, NKV: 2, HS: 64, P: 5 },
  { B: 1, T: 130, NH: 6, NKV: 1, HS: 16, P: 5 },
  { B: 1, T: 37, NH: 2, NKV: 2, HS: 64, P: 0, mag: 30 },
  { B: 1, T: 21, NH: 2, NKV: 1, HS: 16, P: 3, causal: false, scale: 0.3 },
  { B: 1, T: 20, NH: 4, NKV: 2, HS: 16, P: 11 },
  { B: 1, T: 10, NH: 2, NKV: 1, HS: 6, P: 2 },
];

// 'gpu' forces the tiled mapping on a CPU adapter too (its default there is the row-per-thread
// one of attention_cpu.ts), on cases that share three pipeline sets: HS 16 with and without a
// prefix (a single token; T over two blocks; no causal mask) and HS 64 with grouped heads
const GPU_CASES: readonly (readonly [number, DType])[] = [
  [0, 'f32'],
  [1, 'f32'],
  [2, 'bf16'],
  [4, 'f16'],
];

// chunked prefixes (prefixChunk C: query t sees only pk block floor(t/C)): T=70 not a multiple
// of C; C=16 and 32 below the GPU mapping's 64-query blocks (which then straddle 2 or 4
// chunks) and C=5 straddling the CPU mapping's blocks of 8 or 16 (14 chunks, 126 pk rows: dk/dv
// key blocks of prefix rows only, walking only their chunks' queries, and forward rows whose
// first key tiles are all masked); P=3 and 9 (dk/dv key blocks spanning many chunks, and mixing
// prefix and sequence keys); C=100 > T (a single chunk); HS
// 16 and 64 share the pipelines above (the chunk size is a uniform), HS 8 on the adapter only
const CHUNK_CASES: Case[] = [
  { B: 2, T: 70, NH: 4, NKV: 2, HS: 16, P: 3, prefixChunk: 16 },
  { B: 2, T: 70, NH: 4, NKV: 2, HS: 64, P: 9, prefixChunk: 32, causal: false },
  { B: 1, T: 70, NH: 4, NKV: 2, HS: 16, P: 9, prefixChunk: 32 },
  { B: 1, T: 70, NH: 2, NKV: 1, HS: 16, P: 9, prefixChunk: 5, causal: false },
  { B: 1, T: 20, NH: 2, NKV: 1, HS: 16, P: 3, prefixChunk: 100 },
  { B: 1, T: 37, NH: 4, NKV: 2, HS: 8, P: 3, prefixChunk: 16, causal: false },
];
/** [case, dtype, mapping] of the chunked runs: f32 on both mappings, 16-bit storage on a few */
const CHUNK_RUNS: readonly (readonly [number, DType, Mapping])[] = [
  ...CHUNK_CASES.map((_, i) => [i, 'f32', 'adapter'] as const),
  ...[0, 1, 2, 3].map((i) => [i, 'f32', 'gpu'] as const),
  [2, 'bf16', 'adapter'],
  [3, 'f16', 'adapter'],
  [0, 'f16', 'gpu'],
  [1, 'bf16', 'gpu'],
];

async function check(c: Case, dtype: DType): Promise<void> {
  const gpu = await testGpu();
  const { B, T, NH, NKV, HS, P } = c;
  const PR = ref.prefixRows(c);
  const rng = new Rng(B * 7919 + T * 131 + NH * 17 + HS + P + (c.prefixChunk ?? 0) * 3);
  const x = (n: number, s = 1) => roundTo(rng.normals(n, s), dtype);
  const [nq, nkv, np] = [B * T * NH * HS, B * T * NKV * HS, B * PR * NKV * HS];
  const q = x(nq, c.mag ?? 1);
  const [k, v, pk, pv, g] = [x(nkv), x(nkv), x(np), x(np), x(nq)];
  const qs = [B, T, NH, HS];
  const ks = [B, T, NKV, HS];
  const ps = [B, PR, NKV, HS];
  const up = (a: Float64Array, s: number[], l: string) => gpu.tensorFrom(a, s, dtype, l);
  const t = { q: await up(q, qs, 'q'), k: await up(k, ks, 'k'), v: await up(v, ks, 'v'), dout: await up(g, qs, 'dout') };
  const pre = P > 0 ? { pk: await up(pk, ps, 'pk'), pv: await up(pv, ps, 'pv') } : {};
  const dpre = P > 0 ? { dpk: await gpu.tensor(ps, dtype, 'dpk'), dpv: await gpu.tensor(ps, dtype, 'dpv') } : {};
  const out = await gpu.tensor(qs, dtype, 'out');
  const lse = await gpu.tensor([B, NH, T], 'f32', 'lse');
  const d = { dq: await gpu.tensor(qs, dtype, 'dq'), dk: await gpu.tensor(ks, dtype, 'dk'), dv: await gpu.tensor(ks, dtype, 'dv') };
  const opts = {
    ...(c.scale !== undefined ? { scale: c.scale } : {}),
    ...(c.causal !== undefined ? { causal: c.causal } : {}),
    ...(c.prefixChunk !== undefined ? { prefixChunk: c.prefixChunk } : {}),
  };
  await attentionForward(gpu, { out, lse }, { q: t.q, k: t.k, v: t.v, ...pre }, opts);
  await attentionBackward(gpu, { ...d, ...dpre }, { ...t, ...pre, out, lse }, opts);
  const f = ref.attentionForward(q, k, v, pk, pv, c);
  const r = ref.attentionBackward(g, q, k, v, pk, pv, f.out, f.lse, c);
  const tol = TOL[dtype];
  assertClose('out', await gpu.read(out), f.out, tol);
  assertClose('lse', await gpu.read(lse), f.lse, TOL.f32);
  assertClose('dq', await gpu.read(d.dq), r.dq, tol);
  assertClose('dk', await gpu.read(d.dk), r.dk, tol);
  assertClose('dv', await gpu.read(d.dv), r.dv, tol);
  if (dpre.dpk && dpre.dpv) {
    assertClose('dpk', await gpu.read(dpre.dpk), r.dpk, tol);
    assertClose('dpv', await gpu.read(dpre.dpv), r.dpv, tol);
  }
  for (const x of [...Object.values(t), ...Object.values(pre), ...Object.values(d), ...Object.values(dpre), out, lse]) x.dispose();
}

async function checkMapping(c: Case, dtype: DType, mapping: Mapping): Promise<void> {
  await withMapping(await testGpu(), mapping, () => check(c, dtype));
}

for (const c of CASES) {
  for (const dtype of DTYPES) {
    test(`attention ${dtype} ${JSON.stringify(c)} (adapter mapping)`, () => checkMapping(c, dtype, 'adapter'));
  }
}
for (const [i, dtype] of GPU_CASES) {
  const c = CASES[i]!;
  test(`attention ${dtype} ${JSON.stringify(c)} (gpu mapping)`, () => checkMapping(c, dtype, 'gpu'));
}

for (const [i, dtype, mapping] of CHUNK_RUNS) {
  const c = CHUNK_CASES[i]!;
  test(`attention chunked prefix ${dtype} ${JSON.stringify(c)} (${mapping} mapping)`, () => checkMapping(c, dtype, mapping));
}

// prefixLen (forward only): pk/pv hold PR rows per batch row, only the first L are keys, as a
// batched KV cache binds them (rows front + max apart, L filled): the result must equal the
// reference's with pk cut to its first L rows. two batch rows (the stride matters), a single
// query (decoding) and 5 queries (a prompt chunk), L = 0 (no prefix), HS 16 and 64 (the
// pipelines above), both mappings
const LEN_CASES = [
  { B: 2, T: 1, NH: 4, NKV: 2, HS: 64, PR: 12, L: 7 },
  { B: 2, T: 5, NH: 2, NKV: 1, HS: 16, PR: 20, L: 11 },
  { B: 3, T: 1, NH: 2, NKV: 1, HS: 16, PR: 9, L: 0 },
];
for (const mapping of ['adapter', 'gpu'] as const) {
  test(`attention prefixLen: the first L of pk's rows per batch row are the keys (${mapping} mapping)`, async () =>
    withMapping(await testGpu(), mapping, async () => {
      const gpu = await testGpu();
      for (const { B, T, NH, NKV, HS, PR, L } of LEN_CASES) {
        const rng = new Rng(B * 31 + T * 7 + PR + L);
        const [q, k, v] = [rng.normals(B * T * NH * HS), rng.normals(B * T * NKV * HS), rng.normals(B * T * NKV * HS)];
        const [pk, pv] = [rng.normals(B * PR * NKV * HS), rng.normals(B * PR * NKV * HS)];
        const cut = (a: Float64Array) => {
          const w = NKV * HS;
          const r = new Float64Array(B * L * w);
          for (let b = 0; b < B; b++) r.set(a.subarray(b * PR * w, (b * PR + L) * w), b * L * w);
          return r;
        };
        const up = (a: Float64Array, sh: number[], l: string) => gpu.tensorFrom(a, sh, 'f32', l);
        const qs = [B, T, NH, HS];
        const ks = [B, T, NKV, HS];
        const t = { q: await up(q, qs, 'q'), k: await up(k, ks, 'k'), v: await up(v, ks, 'v'), pk: await up(pk, [B, PR, NKV, HS], 'pk'), pv: await up(pv, [B, PR, NKV, HS], 'pv') };
        const out = await gpu.tensor(qs, 'f32', 'out');
        const lse = await gpu.tensor([B, NH, T], 'f32', 'lse');
        await attentionForward(gpu, { out, lse }, t, { prefixLen: L });
        const f = ref.attentionForward(q, k, v, cut(pk), cut(pv), { B, T, NH, NKV, HS, P: L });
        assertClose(`out B=${B} T=${T} L=${L}`, await gpu.read(out), f.out, TOL.f32);
        assertClose(`lse B=${B} T=${T} L=${L}`, await gpu.read(lse), f.lse, TOL.f32);
        for (const x of [...Object.values(t), out, lse]) x.dispose();
      }
    }));
}

test('attention rejects wrong shapes and dtypes, naming the op and the tensors', async () => {
  const gpu = await testGpu();
  const mk = (s: number[], dt: DType = 'f32', l = 't') => gpu.tensor(s, dt, l);
  const q = await mk([1, 4, 4, 16], 'f32', 'q');
  const k = await mk([1, 4, 2, 16], 'f32', 'k');
  const v = await mk([1, 4, 2, 16], 'f32', 'v');
  const out = await mk([1, 4, 4, 16], 'f32', 'out');
  const lse = await mk([1, 4, 4], 'f32', 'lse');
  const fwd = (i: Partial<Record<'q' | 'k' | 'v' | 'pk' | 'pv' | 'out' | 'lse', Awaited<ReturnType<typeof mk>>>>) =>
    attentionForward(gpu, { out: i.out ?? out, lse: i.lse ?? lse }, { q: i.q ?? q, k: i.k ?? k, v: i.v ?? v, ...(i.pk ? { pk: i.pk } : {}), ...(i.pv ? { pv: i.pv } : {}) });
  const rejects = (p: Promise<void>, re: RegExp) => assert.rejects(p, (e: unknown) => e instanceof ShapeError && re.test(e.message));
  await rejects(fwd({ k: await mk([1, 4, 2, 8], 'f32', 'k') }), /attentionForward: k k\[1,4,2,8\]:f32 should have shape \[1,4,\*,16\]/);
  await rejects(fwd({ k: await mk([1, 4, 3, 16], 'f32', 'k') }), /attentionForward: NH=4 .* multiple of NKV=3/);
  await rejects(fwd({ v: await mk([1, 3, 2, 16], 'f32', 'v') }), /attentionForward: v v\[1,3,2,16\]:f32 should have shape \[1,4,2,16\]/);
  await rejects(fwd({ lse: await mk([1, 4, 3], 'f32', 'lse') }), /attentionForward: lse lse\[1,4,3\]:f32 should have shape \[1,4,4\]/);
  await rejects(fwd({ lse: await mk([1, 4, 4], 'f16', 'lse') }), /attentionForward: lse lse\[1,4,4\]:f16 must be one of f32/);
  await rejects(fwd({ pk: await mk([1, 2, 2, 16], 'f32', 'pk') }), /attentionForward: give both pk and pv/);
  await rejects(fwd({ pk: await mk([1, 2, 2, 16], 'f32', 'pk'), pv: await mk([1, 3, 2, 16], 'f32', 'pv') }), /pv pv\[1,3,2,16\]:f32 should have shape \[1,2,2,16\]/);
  const q3 = await mk([1, 4, 2, 3], 'f32', 'q');
  const k3 = await mk([1, 4, 2, 3], 'f32', 'k');
  await rejects(attentionForward(gpu, { out: q3, lse: await mk([1, 2, 4]) }, { q: q3, k: k3, v: k3 }), /attentionForward: head size HS=3 .* even HS from 2 to 128/);
  const q256 = await mk([1, 1, 1, 256], 'f32', 'q');
  await rejects(attentionForward(gpu, { out: q256, lse: await mk([1, 1, 1]) }, { q: q256, k: q256, v: q256 }), /HS=256/);
  // chunked prefix: T=4 in chunks of 3 makes 2 chunks, so pk needs an even row count
  const pk3 = await mk([1, 3, 2, 16], 'f32', 'pk');
  const chunked = (pk: Awaited<ReturnType<typeof mk>>, prefixChunk: number) =>
    attentionForward(gpu, { out, lse }, { q, k, v, pk, pv: pk }, { prefixChunk });
  await rejects(chunked(pk3, 3), /attentionForward: pk pk\[1,3,2,16\]:f32 should have ceil\(T\/C\)\*P rows.*2 chunks, which do not divide 3/);
  await rejects(chunked(pk3, -1), /attentionForward: prefixChunk=-1/);
  await rejects(chunked(pk3, 1.5), /attentionForward: prefixChunk=1.5/);
  await rejects(
    attentionBackward(gpu, { dq: out, dk: k, dv: v, dpk: pk3, dpv: pk3 }, { dout: out, q, k, v, pk: pk3, pv: pk3, out, lse }, { prefixChunk: 2 }),
    /attentionBackward: pk pk\[1,3,2,16\]:f32 should have ceil\(T\/C\)\*P rows/,
  );
  await rejects(attentionForward(gpu, { out, lse }, { q, k, v, pk: pk3, pv: pk3 }, { prefixLen: 4 }), /attentionForward: prefixLen=4 should be a whole number of pk's 3 rows/);
  await rejects(attentionForward(gpu, { out, lse }, { q, k, v }, { prefixLen: 1 }), /attentionForward: prefixLen=1 without pk and pv/);
  await rejects(attentionForward(gpu, { out, lse }, { q, k, v, pk: pk3, pv: pk3 }, { prefixLen: 1, prefixChunk: 4 }), /prefixLen applies to an unchunked prefix/);
  await rejects(attentionBackward(gpu, { dq: out, dk: k, dv: v, dpk: pk3, dpv: pk3 }, { dout: out, q, k, v, pk: pk3, pv: pk3, out, lse }, { prefixLen: 2 }), /attentionBackward: prefixLen is for the forward/);
  const bwd = (dq: Awaited<ReturnType<typeof mk>>) => attentionBackward(gpu, { dq, dk: k, dv: v }, { dout: out, q, k, v, out, lse });
  await rejects(bwd(await mk([1, 4, 4, 8], 'f32', 'dq')), /attentionBackward: dq dq\[1,4,4,8\]:f32 should have shape \[1,4,4,16\]/);
  const pk = await mk([1, 2, 2, 16], 'f32', 'pk');
  await rejects(
    attentionBackward(gpu, { dq: out, dk: k, dv: v }, { dout: out, q, k, v, pk, pv: pk, out, lse }),
    /attentionBackward: a prefix pk .* needs dpk and dpv/,
  );
});

test('attentionFlops counts 4 B NH HS per visible (query, key) pair', () => {
  assert.equal(attentionFlops(4, 16, 2048, 64, 0, true), (4 * 4 * 16 * 2048 * 2048 * 64) / 2);
  assert.equal(attentionFlops(1, 2, 10, 8, 3, false), 4 * 2 * 10 * 13 * 8);
  assert.equal(attentionFlops(1, 2, 10, 8, 3, true), 4 * 2 * 8 * (10 * 3 + 100 / 2));
});
