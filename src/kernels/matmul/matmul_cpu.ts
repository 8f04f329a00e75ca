// The matmul path for CPU adapters (Mesa lavapipe): a barrier-free product built on subgroup
// broadcasts. Same contract as matmul() (matmul.ts header): out (Bt,M,N) = alpha op(a) op(b)
// + bias, or out += ..., any transposes, a 2-D operand broadcast over the batch.
//
// why a separate kernel: lavapipe runs a workgroup's invocations as the SIMD lanes of one CPU
// thread (S = 8 lanes of f32 with AVX2). there a load from storage or workgroup memory costs
// about the same per lane whether the lanes read one address, consecutive ones or strided ones,
// and about ten times a lane's multiply-add; a barrier splits the shader into coroutines.
// bench/probe_cpu_matmul.ts measures this (bench/results/cpu_probe-llvmpipe-*.json) and the
// tiled kernel, a barrier-free lane-per-columns kernel and this one on a small model's shapes.
// so the kernel minimises loads per multiply-add and has no workgroup memory and no barrier:
//
// thread mapping: a workgroup is one subgroup of S lanes and computes an RM x (S CN) tile of
// out. per k, lane l loads RM/S elements of op(a) (rows m0 + l + S i) and CN of op(b)
// (columns n0 + l + S c): RM/S + CN loads for RM CN multiply-adds per lane; the a value of
// row r reaches every lane through subgroupBroadcast(., r % S), a register shuffle. transposed
// operands cost the same (a strided load is no dearer than a contiguous one here), so no
// operand is transposed first. grid: x tiles along n, y tiles along m, z the batch.
// bounds: loads clamp their row/column into range (the lanes stay converged for the
// broadcasts), stores are guarded per element; K needs no padding.
// numerics: f32 accumulation in k order (bitwise reproducible); a, b, bias in f32/f16/bf16;
// out f32 (16-bit outputs take the tiled path).
//
// requires the subgroups feature and a fixed subgroup size of 4, 8 or 16 (simdLanes() in kernel.ts).

import type { Gpu } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { LimitError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { header, launch, simdLanes, type ParamSpec, wgslOnce } from '../kernel.ts';
import type { MatmulDims } from './matmul.ts'; // types only: matmul.ts imports this file

/** rows of op(a) per workgroup, and columns of op(b) per lane */
const RM = 16;
const CN = 8;

interface CpuSpec {
  S: number;
  transA: boolean;
  transB: boolean;
  a: DType;
  b: DType;
  bias: DType | null;
  accumulate: boolean;
}

const PARAMS: ParamSpec = [
  ['M', 'u32'],
  ['N', 'u32'],
  ['K', 'u32'],
  ['sA', 'u32'], // batch strides in elements (0: broadcast)
  ['sB', 'u32'],
  ['alpha', 'f32'],
];

function cpuWgsl(s: CpuSpec): string {
  const I = RM / s.S; // a rows loaded per lane
  const R = Array.from({ length: RM }, (_, r) => r);
  const C = Array.from({ length: CN }, (_, c) => c);
  const storage = [
    { name: 'out', type: 'f32' as const, access: 'read_write' as const },
    { name: 'a', type: s.a, access: 'read' as const },
    { name: 'b', type: s.b, access: 'read' as const },
    ...(s.bias ? [{ name: 'bias', type: s.bias, access: 'read' as const }] : []),
  ];
  // element (row, k) of op(a) is a[offA + row * rowA + k * kA]; (k, col) of op(b) likewise
  const [rowA, kA] = s.transA ? ['1u', 'p.M'] : ['p.K', '1u'];
  const [colB, kB] = s.transB ? ['p.K', '1u'] : ['1u', 'p.N'];
  return /* wgsl */ `
enable subgroups;
${header(storage, PARAMS)}
@compute @workgroup_size(${s.S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) l: u32) {
  let m0 = wid.y * ${RM}u;
  let nt = wid.x * ${s.S * CN}u;
  let z = wid.z;
  ${Array.from({ length: I }, (_, i) => `let ia${i} = z * p.sA + min(m0 + l + ${s.S * i}u, p.M - 1u) * ${rowA};`).join('\n  ')}
  ${C.map((c) => `let ib${c} = z * p.sB + min(nt + l + ${s.S * c}u, p.N - 1u) * ${colB};`).join('\n  ')}
  ${R.map((r) => C.map((c) => `var c${r}_${c} = 0.0;`).join(' ')).join('\n  ')}
  for (var k = 0u; k < p.K; k++) {
    ${Array.from({ length: I }, (_, i) => `let a${i} = ld_a(ia${i} + k * ${kA});`).join(' ')}
    ${C.map((c) => `let b${c} = ld_b(ib${c} + k * ${kB});`).join(' ')}
    ${R.map((r) => `{ let x = subgroupBroadcast(a${Math.floor(r / s.S)}, ${r % s.S}u); ${C.map((c) => `c${r}_${c} = fma(x, b${c}, c${r}_${c});`).join(' ')} }`).join('\n    ')}
  }
  let zo = z * p.M * p.N;
  ${C.map((c) => `let n${c} = nt + l + ${s.S * c}u;`).join(' ')}
  ${s.bias ? C.map((c) => `let bias${c} = ld_bias(min(n${c}, p.N - 1u));`).join(' ') : ''}
  ${R.map((r) => {
    const stores = C.map((c) => {
      const v = `c${r}_${c} * p.alpha${s.bias ? ` + bias${c}` : ''}`;
      return `if (n${c} < p.N) { let o = row + n${c}; out[o] = ${s.accumulate ? `out[o] + ` : ''}${v}; }`;
    });
    return `if (m0 + ${r}u < p.M) { let row = zo + (m0 + ${r}u) * p.N; ${stores.join(' ')} }`;
  }).join('\n  ')}
}`;
}

/** Records the product (see the header); `out` must be f32. */
export async function matmulCpu(
  gpu: Gpu,
  out: Tensor,
  i: { a: Tensor; b: Tensor; bias?: Tensor },
  d: MatmulDims,
  o: { transA: boolean; transB: boolean; accumulate: boolean; alpha: number; dtypes: { a: DType; b: DType; bias: DType | null } },
): Promise<void> {
  const S = simdLanes(gpu);
  if (S === null) throw new LimitError(`matmul: the cpu path needs subgroups of a fixed size 4, 8 or 16 (adapter '${gpu.adapterName}')`);
  if (out.dtype !== 'f32') throw new LimitError(`matmul: the cpu path writes f32 only, out is ${out}`);
  const spec: CpuSpec = { S, transA: o.transA, transB: o.transB, a: o.dtypes.a, b: o.dtypes.b, bias: o.dtypes.bias, accumulate: o.accumulate };
  const x = Math.ceil(d.N / (S * CN));
  const y = Math.ceil(d.M / RM);
  const max = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (x > max || y > max || d.batch > max) throw new LimitError(`matmul: cpu path grid [${x},${y},${d.batch}] exceeds ${max} per dimension`);
  const name = `matmul_cpu_s${S}_${o.transA ? 't' : 'n'}${o.transB ? 't' : 'n'}_${spec.a}_${spec.b}${spec.bias ? `_bias_${spec.bias}` : ''}${o.accumulate ? '_acc' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(`matmul_cpu ${JSON.stringify(spec)}`, () => cpuWgsl(spec)),
    storage: i.bias ? [out, i.a, i.b, i.bias] : [out, i.a, i.b],
    params: PARAMS,
    values: { M: d.M, N: d.N, K: d.K, sA: d.sA, sB: d.sB, alpha: o.alpha },
    workgroups: [x, y, d.batch],
  });
}
