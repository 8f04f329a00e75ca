import assert from 'node:assert/strict';
import { test } from 'node:test';
import { roundTo, type DType } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import { assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { DEFAULT_SUBGROUP_TILE, SUBGROUP_TILES, fmtTile, matmulSubgroup, subgroupMatmulSupported, type SubgroupTile } from './matmul_subgroup.ts';

// on an adapter with chromium-experimental-subgroup-matrix every case runs against a float64
// reference; without it every case asserts that the path says no and throws an error naming
// the missing feature. the cases reach every way out of the kernel: tiles stored in place (with
// and without a bias pre-pass), through the padded scratch buffer and the finish pass (f16 out,
// edges), and the in-kernel 'scratch' and 'reuse' epilogues. f16 inputs are exact in both, so f32 outputs are held to 1e-3 (f32
// accumulation error is ~1e-6) and f16 outputs to 1e-2 (their own rounding is ~3e-4).

const FEATURE = 'chromium-experimental-subgroup-matrix';
const BUFFER: SubgroupTile = { ...DEFAULT_SUBGROUP_TILE, epilogue: 'buffer' };
const TOL_OUT: Record<'f32' | 'f16', number> = { f32: 1e-3, f16: 1e-2 };

interface Case {
  M: number;
  N: number;
  K: number;
  batch?: number;
  /** b has no batch dims (shared weights) */
  sharedB?: boolean;
  transA?: boolean;
  transB?: boolean;
  out?: 'f32' | 'f16';
  bias?: DType;
  accumulate?: boolean;
  scale?: number;
  tile?: SubgroupTile;
}

const CASES: Case[] = [
  { M: 128, N: 128, K: 128 },
  { M: 256, N: 256, K: 256, tile: DEFAULT_SUBGROUP_TILE },
  // edges: M, N, K not multiples of the tile; K below one staged step; a single row
  { M: 200, N: 136, K: 72, bias: 'f32' },
  { M: 130, N: 264, K: 40, tile: DEFAULT_SUBGROUP_TILE, out: 'f16' },
  { M: 37, N: 24, K: 8 },
  { M: 1, N: 64, K: 96, transB: true },
  // transposes, f16 out, accumulate with bias, large magnitudes
  { M: 96, N: 80, K: 64, transA: true, out: 'f16' },
  { M: 96, N: 80, K: 64, transA: true, transB: true },
  { M: 136, N: 128, K: 200, transB: true, accumulate: true, bias: 'bf16', tile: DEFAULT_SUBGROUP_TILE },
  { M: 128, N: 128, K: 256, accumulate: true, tile: DEFAULT_SUBGROUP_TILE },
  { M: 64, N: 48, K: 64, out: 'f16', accumulate: true, bias: 'f16', scale: 6 },
  // grouped launch order with a partial last group (4 block rows in groups of 3)
  { M: 392, N: 264, K: 64, tile: { ...DEFAULT_SUBGROUP_TILE, group: 3 } },
  // f32 out on an exact grid with a bias: in the kernel, or stored in place after a pre-pass
  { M: 256, N: 128, K: 128, bias: 'f16', tile: DEFAULT_SUBGROUP_TILE },
  { M: 256, N: 128, K: 128, bias: 'f16', tile: BUFFER },
  { M: 128, N: 256, K: 72, bias: 'f32', accumulate: true, tile: BUFFER },
  // through the padded f32 buffer and the finish pass (f16 out, edges)
  { M: 200, N: 136, K: 72, out: 'f16', bias: 'bf16', accumulate: true, tile: BUFFER },
  { M: 136, N: 264, K: 40, transA: true, tile: BUFFER },
  { M: 72, N: 40, K: 24, batch: 2, transB: true, out: 'f16', tile: { ...SUBGROUP_TILES[SUBGROUP_TILES.length - 1]!, epilogue: 'buffer' } },
  // the idle staging arrays as the epilogue's scratch
  { M: 200, N: 136, K: 72, out: 'f16', bias: 'f16', accumulate: true, tile: { ...DEFAULT_SUBGROUP_TILE, epilogue: 'reuse' } },
  { M: 130, N: 264, K: 40, transB: true, bias: 'f32', tile: { ...DEFAULT_SUBGROUP_TILE, epilogue: 'reuse' } },
  { M: 72, N: 40, K: 24, batch: 2, transA: true, out: 'f16', tile: { BM: 64, BN: 64, BK: 32, WM: 2, WN: 2, stages: 2, pad: 8, epilogue: 'reuse' } },
  // the slower f16-staged variant
  { M: 200, N: 136, K: 72, transA: true, out: 'f16', tile: { ...DEFAULT_SUBGROUP_TILE, smem: 'f16' } },
  // batched: own b per batch, and one b shared by all
  { M: 64, N: 48, K: 40, batch: 3 },
  { M: 72, N: 40, K: 24, batch: 2, sharedB: true, transA: true },
  // every candidate tile once, on a shape that divides none of them
  ...SUBGROUP_TILES.map((tile) => ({ M: 264, N: 272, K: 104, tile, transB: true })),
];

/** row-major (r x c) -> (c x r), per batch */
function transpose(x: Float64Array, batch: number, r: number, c: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let z = 0; z < batch; z++) {
    const o = z * r * c;
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) y[o + j * r + i] = x[o + i * c + j]!;
  }
  return y;
}

/** out (batch,M,N) = old + a (batch,M,K) @ b ((batch,)K,N) + bias (N), in float64 */
function reference(a: Float64Array, b: Float64Array, bias: Float64Array | null, old: Float64Array | null, c: Required<Pick<Case, 'M' | 'N' | 'K'>> & { batch: number; sharedB: boolean }): Float64Array {
  const { M, N, K, batch, sharedB } = c;
  const out = new Float64Array(batch * M * N);
  for (let z = 0; z < batch; z++) {
    const ob = sharedB ? 0 : z * K * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = (old?.[z * M * N + i * N + j] ?? 0) + (bias?.[j] ?? 0);
        for (let k = 0; k < K; k++) s += a[z * M * K + i * K + k]! * b[ob + k * N + j]!;
        out[z * M * N + i * N + j] = s;
      }
    }
  }
  return out;
}

const name = (c: Case) =>
  `matmulSubgroup M=${c.M} N=${c.N} K=${c.K}${c.batch ? ` batch=${c.batch}${c.sharedB ? ' shared b' : ''}` : ''}` +
  `${c.transA ? ' transA' : ''}${c.transB ? ' transB' : ''} out=${c.out ?? 'f32'}${c.bias ? ` bias=${c.bias}` : ''}` +
  `${c.accumulate ? ' accumulate' : ''}${c.tile ? ` tile=${fmtTile(c.tile)}` : ''}`;

for (const c of CASES) {
  test(name(c), async () => {
    const gpu = await testGpu();
    const { M, N, K, transA = false, transB = false, accumulate = false, scale = 1 } = c;
    const batch = c.batch ?? 1;
    const sharedB = c.sharedB ?? false;
    const outDtype = c.out ?? 'f32';
    const rng = new Rng(M * 7919 + N * 31 + K);
    const a = roundTo(rng.normals(batch * M * K, scale), 'f16');
    const bBatch = sharedB ? 1 : batch;
    const b = roundTo(rng.normals(bBatch * K * N, scale), 'f16');
    const bias = c.bias ? roundTo(rng.normals(N), c.bias) : null;
    const old = accumulate ? roundTo(rng.normals(batch * M * N), outDtype) : null;
    const lead = c.batch ? [batch] : [];
    const ta = await gpu.tensorFrom(transA ? transpose(a, batch, M, K) : a, [...lead, ...(transA ? [K, M] : [M, K])], 'f16', 'a');
    const tb = await gpu.tensorFrom(transB ? transpose(b, bBatch, K, N) : b, [...(sharedB ? [] : lead), ...(transB ? [N, K] : [K, N])], 'f16', 'b');
    const tbias = bias && c.bias ? await gpu.tensorFrom(bias, [N], c.bias, 'bias') : null;
    const out = old ? await gpu.tensorFrom(old, [...lead, M, N], outDtype, 'out') : await gpu.tensor([...lead, M, N], outDtype, 'out');
    const supported = subgroupMatmulSupported(gpu, { M, N, K, dtypes: { a: 'f16', b: 'f16', out: outDtype }, transA, transB, ...(c.tile ? { tile: c.tile } : {}) });
    const run = () =>
      matmulSubgroup(gpu, { out }, { a: ta, b: tb, ...(tbias ? { bias: tbias } : {}) }, { transA, transB, accumulate, ...(c.tile ? { tile: c.tile } : {}) });
    try {
      if (gpu.features.subgroupMatrix.length === 0) {
        assert.equal(supported, false, 'no subgroup-matrix feature, yet the path claims support');
        await assert.rejects(run, (e: Error) => e instanceof EngramError && e.message.includes(FEATURE) && e.message.includes('matmulSubgroup'));
        return;
      }
      assert.equal(supported, true, 'this case should be supported on an adapter with subgroup matrices');
      await run();
      const want = reference(a, b, bias, old, { M, N, K, batch, sharedB });
      assertClose('out', await gpu.read(out), want, TOL_OUT[outDtype]);
    } finally {
      for (const t of [ta, tb, tbias, out]) t?.dispose();
    }
  });
}

test('matmulSubgroup rejects wrong shapes and dtypes with a ShapeError naming the op', async () => {
  const gpu = await testGpu();
  const a = await gpu.tensor([32, 16], 'f16', 'a');
  const b = await gpu.tensor([24, 8], 'f16', 'b');
  const b32 = await gpu.tensor([16, 8], 'f32', 'b32');
  const out = await gpu.tensor([32, 8], 'f32', 'out');
  const bias = await gpu.tensor([9], 'f32', 'bias');
  try {
    const shapeErr = (what: RegExp) => (e: Error) => e instanceof ShapeError && /matmulSubgroup/.test(e.message) && what.test(e.message);
    // inner dimensions differ: checked before anything adapter-specific
    await assert.rejects(matmulSubgroup(gpu, { out }, { a, b }), shapeErr(/a\[32,16\]:f16.*b\[24,8\]:f16/));
    const b16 = await gpu.tensor([16, 8], 'f16', 'b16');
    try {
      await assert.rejects(matmulSubgroup(gpu, { out }, { a, b: b16, bias }), shapeErr(/bias\[9\]/));
      const outBad = await gpu.tensor([32, 9], 'f32', 'outBad');
      await assert.rejects(matmulSubgroup(gpu, { out: outBad }, { a, b: b16 }), shapeErr(/outBad\[32,9\]/));
      outBad.dispose();
    } finally {
      b16.dispose();
    }
    // f32 inputs: a dtype problem on an adapter with the feature, the feature itself without
    const q = { M: 32, N: 8, K: 16, dtypes: { a: 'f16', b: 'f32', out: 'f32' } as const };
    assert.equal(subgroupMatmulSupported(gpu, q), false);
    await assert.rejects(matmulSubgroup(gpu, { out }, { a, b: b32 }), (e: Error) =>
      gpu.features.subgroupMatrix.length > 0 ? e instanceof ShapeError && /must be f16/.test(e.message) : e.message.includes(FEATURE),
    );
    // a contiguous dimension that is not a multiple of 8 cannot take 16-byte loads
    assert.equal(subgroupMatmulSupported(gpu, { M: 64, N: 64, K: 60, dtypes: { a: 'f16', b: 'f16', out: 'f32' } }), false);
  } finally {
    for (const t of [a, b, b32, out, bias]) t.dispose();
  }
});
