// the trainable product-key memory layer (Memory Layers at Scale, 2024; Lample et al. 2019),
// Memory+ by default. it replaces the FFN of a transformer block: out = Mem(RMSNorm(h)).
//
//   x (T, d) f32 -> q = x Wq^T + bq (T, H dk)  -> q halves as (2H, T, dk/2)   [swapAxes]
//   s (2H, T, n) = each half . its head's sub-keys (keys (2H n, dk/2))        [batched matmul]
//   per (g, t): top-k of n                                                    [topkForward]
//   per (t, h): the exact top-k of the n^2 slots from the k x k candidates,
//               softmax in f32 -> slots, weights (T, H k)                     [productTopkForward]
//   y (T, d) = sum over the H k reads of weight * values[slot]               [membagForward]
//   Memory+: out = Wo (y * silu(Ws x + bs)) + bo;  plain: out = y           [linear, swiglu]
// qkNorm (off by default, as in the released code; the paper applies "qk-normalisation when
// needed" without saying which): each query half and each sub-key row RMS-normalised over its
// dk/2 elements with a learned gain (gq, gk: one per layer, shared by heads and halves, init 1)
// and the scores scaled by 1/sqrt(dk/2), so that they stay O(1) whatever the key dim.
// spec: ../shared/specs/memory-layers.md. raw dot products (no scaling); heads summed; one value
// table shared by all layers (ValueTable), to which backward adds its gradient; or that table sharded
// by columns over several GPUs (ShardedValueTable: the read and its backward run there).
// backward: through the gating projections, the read (dweights and the value rows, no float
// atomics), the softmax and the picks into the half top-k values, the dense score gradient
// (zero off the selected entries) into q and the sub-keys (two batched matmuls), and Wq.
// numerics: activations and parameters f32 here; the value table may be f32/f16/bf16; every
// reduction accumulates in f32 in a fixed order (deterministic). forwardDtype 'f16' rounds the
// operands of the forward's matrix products (x, the weights, the query halves and sub-keys,
// the gated read) to f16, accumulating in f32 into f32 outputs: the tensor-core path where the
// adapter has subgroup matrices. the backward's products stay f32: gradients of a language
// model loss are small enough to underflow f16 (its smallest normal is 6e-5) without loss
// scaling.
// parameter names follow the spec's code (lingua/product_key/memory.py): <name>.query_proj.{weight,bias},
// <name>.keys, <name>.swilu_projection.{weight,bias} (Ws), <name>.value_proj.{weight,bias} (Wo), and
// for qk-norm <name>.query_norm.weight, <name>.key_norm.weight.
// init (spec §4): keys U(+-1/sqrt(dk)) with the full dk; Wq Xavier-uniform; Ws, Wo N(0, d^-0.5);
// biases zero.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { addForward, scale } from '../kernels/add/add.ts';
import { fill } from '../kernels/copy/copy.ts';
import { fillNormal, fillUniform } from '../kernels/init/init.ts';
import { membagBackward, membagForward } from '../kernels/membag/membag.ts';
import { rmsnormBackward, rmsnormForward } from '../kernels/rmsnorm/rmsnorm.ts';
import { linearBackward, linearForward, matmul } from '../kernels/matmul/matmul.ts';
import { swigluBackward, swigluForward } from '../kernels/swiglu/swiglu.ts';
import { productTopkBackward, productTopkForward } from '../kernels/topk/product_topk.ts';
import { topkBackward, topkForward } from '../kernels/topk/topk.ts';
import { swapAxes } from '../kernels/transpose/transpose.ts';
import { memoryStats, tokenReads, type MemoryReadStats } from './memory_stats.ts';
import { createParam, disposeParams, type Param } from './param.ts';
import { ShardedValueTable, type ShardedBag } from './sharded_values.ts';
import type { ValueTable } from './value_table.ts';

export interface MemoryLayerConfig {
  /** model width (value rows are d wide too) */
  d: number;
  /** query heads (mem_heads), default 4 */
  heads?: number;
  /** sub-keys per half per head (mem_n_keys), default 1024: the table has n^2 rows */
  nKeys?: number;
  /** top-k per half and per head (mem_knn), default 32 */
  topk?: number;
  /** query/key dim per head (mem_k_dim), default 512 */
  keyDim?: number;
  /** Memory+ gating (swilu_projection), default true */
  gated?: boolean;
  /** RMS-normalised query halves and sub-keys (see the header), default false */
  qkNorm?: boolean;
  /** operand dtype of the forward's matrix products (see the header), default 'f32' */
  forwardDtype?: 'f32' | 'f16';
}

/** what forward keeps for backward */
interface Saved {
  x: Tensor;
  qh: Tensor;
  halfIdx: Tensor;
  slots: Tensor;
  weights: Tensor;
  pick: Tensor;
  /** y, when gating needs it in backward */
  y?: Tensor;
  z?: Tensor;
  gatedIn?: Tensor;
  /** qkNorm: the normalised halves and keys with their rstd */
  norm?: { qn: Tensor; rq: Tensor; kn: Tensor; rk: Tensor };
  /** a sharded table: the read's bag on every shard */
  shardBag?: ShardedBag;
}

export class MemoryLayer {
  readonly d: number;
  readonly H: number;
  readonly n: number;
  readonly k: number;
  readonly dk: number;
  readonly gated: boolean;
  readonly forwardDtype: 'f32' | 'f16';
  /** wraps every stage of forward and backward when set (benchmarks time them one by one) */
  stageHook: ((stage: string, run: () => Promise<void>) => Promise<void>) | null = null;
  private saved: Saved | null = null;

  private stage(name: string, run: () => Promise<void>): Promise<void> {
    return this.stageHook ? this.stageHook(name, run) : run();
  }

  private constructor(
    private readonly gpu: Gpu,
    readonly name: string,
    c: Required<MemoryLayerConfig>,
    readonly table: ValueTable | ShardedValueTable,
    readonly wq: Param,
    readonly bq: Param,
    readonly keys: Param,
    readonly gate: { ws: Param; bs: Param; wo: Param; bo: Param } | null,
    readonly qkGains: { gq: Param; gk: Param } | null,
  ) {
    this.d = c.d;
    this.H = c.heads;
    this.n = c.nKeys;
    this.k = c.topk;
    this.dk = c.keyDim;
    this.gated = c.gated;
    this.forwardDtype = c.forwardDtype;
  }

  static async create(gpu: Gpu, name: string, config: MemoryLayerConfig, table: ValueTable | ShardedValueTable, seed = 0): Promise<MemoryLayer> {
    const c: Required<MemoryLayerConfig> = { heads: 4, nKeys: 1024, topk: 32, keyDim: 512, gated: true, qkNorm: false, forwardDtype: 'f32', ...config };
    const { d, heads: H, nKeys: n, topk: k, keyDim: dk } = c;
    const bad = (what: string) => new EngramError(`MemoryLayer '${name}': ${what} (config ${JSON.stringify(c)})`);
    if (!(d > 0 && H > 0 && n > 0 && k > 0)) throw bad('d, heads, nKeys and topk must be positive');
    if (dk % 2 !== 0 || dk < 2) throw bad('keyDim must be even: each query half has keyDim/2 elements');
    if (k > n) throw bad(`topk ${k} exceeds nKeys ${n}`);
    if (c.forwardDtype === 'f16' && (d % 2 !== 0 || (dk / 2) % 2 !== 0)) throw bad('f16 forward operands are packed in pairs: d and keyDim/2 must be even');
    if (table.rows !== n * n) throw bad(`the value table has ${table.rows} rows; nKeys^2 = ${n * n} slots`);
    if (table.dim !== d) throw bad(`the value table is ${table.dim} wide; value rows must be d = ${d} wide`);
    // the parameters made so far, freed if a later one cannot be made (out of memory)
    const made: Param[] = [];
    const p = async (suffix: string, shape: number[]) => {
      const q = await createParam(gpu, `${name}.${suffix}`, shape, 'f32');
      made.push(q);
      return q;
    };
    try {
      return await MemoryLayer.build(gpu, name, c, table, seed, p);
    } catch (e) {
      disposeParams(made);
      throw e;
    }
  }

  private static async build(
    gpu: Gpu,
    name: string,
    c: Required<MemoryLayerConfig>,
    table: ValueTable | ShardedValueTable,
    seed: number,
    p: (suffix: string, shape: number[]) => Promise<Param>,
  ): Promise<MemoryLayer> {
    const { d, heads: H, nKeys: n, keyDim: dk } = c;
    const wq = await p('query_proj.weight', [H * dk, d]);
    const bq = await p('query_proj.bias', [H * dk]);
    const keys = await p('keys', [2 * H * n, dk / 2]);
    const xavier = Math.sqrt(6 / (d + H * dk));
    await fillUniform(gpu, wq.value, { lo: -xavier, hi: xavier, seed: seed * 16 + 1 });
    await fillUniform(gpu, keys.value, { lo: -(dk ** -0.5), hi: dk ** -0.5, seed: seed * 16 + 2 });
    await fill(gpu, bq.value, 0);
    let gate: MemoryLayer['gate'] = null;
    if (c.gated) {
      gate = { ws: await p('swilu_projection.weight', [d, d]), bs: await p('swilu_projection.bias', [d]), wo: await p('value_proj.weight', [d, d]), bo: await p('value_proj.bias', [d]) };
      await fillNormal(gpu, gate.ws.value, { std: d ** -0.5, seed: seed * 16 + 3 });
      await fillNormal(gpu, gate.wo.value, { std: d ** -0.5, seed: seed * 16 + 4 });
      await fill(gpu, gate.bs.value, 0);
      await fill(gpu, gate.bo.value, 0);
    }
    let qkGains: MemoryLayer['qkGains'] = null;
    if (c.qkNorm) {
      qkGains = { gq: await p('query_norm.weight', [dk / 2]), gk: await p('key_norm.weight', [dk / 2]) };
      await fill(gpu, qkGains.gq.value, 1);
      await fill(gpu, qkGains.gk.value, 1);
    }
    return new MemoryLayer(gpu, name, c, table, wq, bq, keys, gate, qkGains);
  }

  /** this layer's own parameters (the shared value table's are table.params) */
  get params(): Param[] {
    const gate = this.gate ? [this.gate.ws, this.gate.bs, this.gate.wo, this.gate.bo] : [];
    return [this.wq, this.bq, this.keys, ...gate, ...(this.qkGains ? [this.qkGains.gq, this.qkGains.gk] : [])];
  }

  /** out (T, d) for x (T, d) f32 (the caller's); keeps what backward needs until backward() or release() */
  async forward(x: Tensor): Promise<Tensor> {
    const { gpu, d, H, n, k, dk } = this;
    if (x.shape.length !== 2 || x.shape[1] !== d || x.dtype !== 'f32') {
      throw new EngramError(`MemoryLayer '${this.name}': x ${x} must be [T, ${d}]:f32`);
    }
    this.release();
    const T = x.shape[0]!;
    const G = 2 * H;
    // kept and returned tensors come from the scratch pool too: disposing them gives them back
    const t = async (shape: number[], dtype: 'f32' | 'u32', label: string) => gpu.scratch.take(shape, dtype, `${this.name}.${label}`);
    const q = gpu.scratch.take([T, H * dk], 'f32', 'mem_q');
    const qh = await t([G, T, dk / 2], 'f32', 'qh');
    const s = gpu.scratch.take([G, T, n], 'f32', 'mem_scores');
    const halfVal = gpu.scratch.take([G, T, k], 'f32', 'mem_half_values');
    const halfIdx = await t([G, T, k], 'u32', 'half_idx');
    const slots = await t([T, H, k], 'u32', 'slots');
    const weights = await t([T, H, k], 'f32', 'weights');
    const pick = await t([T, H, k], 'u32', 'pick');
    const scores = gpu.scratch.take([T, H, k], 'f32', 'mem_sel_scores');
    const y = await t([T, d], 'f32', 'y');
    let normKept: Saved['norm'];
    // the forward's product operands: f32 as they are, or f16 copies (scratch, freed below)
    const casts: Tensor[] = [];
    const op = async (u: Tensor): Promise<Tensor> => {
      if (this.forwardDtype === 'f32') return u;
      const h = gpu.scratch.take(u.shape, 'f16', `${u.label}.f16`);
      casts.push(h);
      await scale(gpu, { out: h }, { x: u });
      return h;
    };
    try {
      const x16 = await op(x);
      const wq16 = await op(this.wq.value);
      await this.stage('fwd.query', () => linearForward(gpu, { y: q }, { x: x16, w: wq16, b: this.bq.value }));
      await this.stage('fwd.query_halves', () => swapAxes(gpu, { out: qh }, { x: q.reshape([T, G, dk / 2]) }));
      let qs = qh;
      let ks = this.keys.value;
      let alpha = 1;
      if (this.qkGains) {
        const { gq, gk } = this.qkGains;
        const norm = {
          qn: await t([G, T, dk / 2], 'f32', 'qn'),
          rq: await t([G * T], 'f32', 'rq'),
          kn: await t([G * n, dk / 2], 'f32', 'kn'),
          rk: await t([G * n], 'f32', 'rk'),
        };
        normKept = norm;
        await this.stage('fwd.qk_norm', async () => {
          await rmsnormForward(gpu, { out: norm.qn.reshape([G * T, dk / 2]), rstd: norm.rq }, { x: qh.reshape([G * T, dk / 2]), w: gq.value });
          await rmsnormForward(gpu, { out: norm.kn, rstd: norm.rk }, { x: this.keys.value, w: gk.value });
        });
        [qs, ks, alpha] = [norm.qn, norm.kn, (dk / 2) ** -0.5];
      }
      const qs16 = await op(qs);
      const ks16 = await op(ks);
      await this.stage('fwd.subkey_scores', () => matmul(gpu, { out: s }, { a: qs16, b: ks16.reshape([G, n, dk / 2]) }, { transB: true, alpha }));
      await this.stage('fwd.topk_halves', () => topkForward(gpu, { values: halfVal, indices: halfIdx }, { scores: s }));
      await this.stage('fwd.topk_product', () => productTopkForward(gpu, { slots, weights, pick, scores }, { values: halfVal, indices: halfIdx }, n));
      const bag = { idx: slots.reshape([T, H * k]), w: weights.reshape([T, H * k]) };
      const table = this.table;
      let shardBag: ShardedBag | undefined;
      if (table instanceof ShardedValueTable) {
        // sharded by columns over several GPUs (sharded_values.ts): its shards mark their reads
        await this.stage('fwd.read', async () => {
          shardBag = await table.forward(gpu, y, bag.idx, bag.w);
        });
        await this.stage('fwd.mark_reads', () => table.markReads(shardBag!));
      } else {
        if (table.tracksReads) await this.stage('fwd.mark_reads', () => table.markReads(gpu, slots));
        await this.stage('fwd.read', () => membagForward(gpu, { out: y }, { values: table.values, ...bag }));
      }
      this.saved = { x, qh, halfIdx, slots, weights, pick, ...(normKept ? { norm: normKept } : {}), ...(shardBag ? { shardBag } : {}) };
      if (!this.gate) return y;
      const z = await t([T, d], 'f32', 'z');
      const gatedIn = await t([T, d], 'f32', 'gated_in');
      const out = await t([T, d], 'f32', 'out');
      Object.assign(this.saved, { y, z, gatedIn });
      const gate = this.gate;
      const ws16 = await op(gate.ws.value);
      const wo16 = await op(gate.wo.value);
      await this.stage('fwd.gate_ws', () => linearForward(gpu, { y: z }, { x: x16, w: ws16, b: gate.bs.value }));
      await this.stage('fwd.gate_silu', () => swigluForward(gpu, { out: gatedIn }, { g: z, u: y }));
      const gated16 = await op(gatedIn);
      await this.stage('fwd.gate_wo', () => linearForward(gpu, { y: out }, { x: gated16, w: wo16, b: gate.bo.value }));
      return out;
    } finally {
      for (const u of [q, s, halfVal, scores, ...casts]) u.dispose();
    }
  }

  /**
   * dx (T, d) for dout (T, d); adds into the gradients of this layer's parameters and of the
   * value table, and frees what forward kept. the tensors forward and backward return are the
   * caller's to dispose.
   */
  async backward(dout: Tensor): Promise<Tensor> {
    const sv = this.saved;
    if (!sv) throw new EngramError(`MemoryLayer '${this.name}': backward() without a forward() before it`);
    const { gpu, d, H, n, k, dk } = this;
    const T = sv.x.shape[0]!;
    const G = 2 * H;
    const dx = gpu.scratch.take([T, d], 'f32', `${this.name}.dx`);
    const tmp: Tensor[] = [];
    const take = (shape: number[], label: string) => {
      const u = gpu.scratch.take(shape, 'f32', label);
      tmp.push(u);
      return u;
    };
    try {
      let dy = dout;
      const gate = this.gate;
      if (gate) {
        const dgated = take([T, d], 'mem_dgated');
        const dz = take([T, d], 'mem_dz');
        const dyg = take([T, d], 'mem_dy');
        dy = dyg;
        await this.stage('bwd.gate_wo', () => linearBackward(gpu, { dx: dgated, dw: gate.wo.grad, db: gate.bo.grad }, { dout, x: sv.gatedIn!, w: gate.wo.value }));
        await this.stage('bwd.gate_silu', () => swigluBackward(gpu, { dg: dz, du: dyg }, { dout: dgated, g: sv.z!, u: sv.y! }));
        // dx = Ws^T dz here; the query path adds its part below
        await this.stage('bwd.gate_ws', () => linearBackward(gpu, { dx, dw: gate.ws.grad, db: gate.bs.grad }, { dout: dz, x: sv.x, w: gate.ws.value }));
      }
      const dw = take([T, H * k], 'mem_dweights');
      const bag = { idx: sv.slots.reshape([T, H * k]), w: sv.weights.reshape([T, H * k]) };
      const dyRead = dy;
      const table = this.table;
      if (table instanceof ShardedValueTable) await this.stage('bwd.read', () => table.backward(gpu, { dw }, sv.shardBag!, dyRead));
      else await this.stage('bwd.read', () => membagBackward(gpu, { dw, dvalues: table.grads }, { values: table.values, ...bag, dout: dyRead }));
      const dhalf = take([G, T, k], 'mem_dhalf');
      await this.stage('bwd.topk_product', () => productTopkBackward(gpu, { dvalues: dhalf }, { weights: sv.weights, pick: sv.pick, dweights: dw.reshape([T, H, k]) }));
      const ds = take([G, T, n], 'mem_dscores');
      await this.stage('bwd.topk_halves', () => topkBackward(gpu, { dscores: ds }, { indices: sv.halfIdx, dvalues: dhalf }));
      const dqh = take([G, T, dk / 2], 'mem_dqh');
      const norm = sv.norm;
      const qk = this.qkGains;
      if (norm && qk) {
        // through the normalised vectors, then the two RMSNorms
        const alpha = (dk / 2) ** -0.5;
        const dqn = take([G, T, dk / 2], 'mem_dqn');
        const dkn = take([G * n, dk / 2], 'mem_dkn');
        const dkeys = take([G * n, dk / 2], 'mem_dkeys');
        await this.stage('bwd.subkey_dq', () => matmul(gpu, { out: dqn }, { a: ds, b: norm.kn.reshape([G, n, dk / 2]) }, { alpha }));
        await this.stage('bwd.subkey_dkeys', () => matmul(gpu, { out: dkn.reshape([G, n, dk / 2]) }, { a: ds, b: norm.qn }, { transA: true, alpha }));
        await this.stage('bwd.qk_norm', async () => {
          await rmsnormBackward(gpu, { dx: dqh.reshape([G * T, dk / 2]), dw: qk.gq.grad }, { dout: dqn.reshape([G * T, dk / 2]), x: sv.qh.reshape([G * T, dk / 2]), w: qk.gq.value, rstd: norm.rq });
          await rmsnormBackward(gpu, { dx: dkeys, dw: qk.gk.grad }, { dout: dkn, x: this.keys.value, w: qk.gk.value, rstd: norm.rk });
          await addForward(gpu, { out: this.keys.grad }, { a: this.keys.grad, b: dkeys });
        });
      } else {
        const keys3 = this.keys.value.reshape([G, n, dk / 2]);
        await this.stage('bwd.subkey_dq', () => matmul(gpu, { out: dqh }, { a: ds, b: keys3 }));
        await this.stage('bwd.subkey_dkeys', () => matmul(gpu, { out: this.keys.grad.reshape([G, n, dk / 2]) }, { a: ds, b: sv.qh }, { transA: true, accumulate: true }));
      }
      const dq = take([T, H * dk], 'mem_dq');
      await this.stage('bwd.query_halves', () => swapAxes(gpu, { out: dq.reshape([T, G, dk / 2]) }, { x: dqh }));
      const dxq = gate ? take([T, d], 'mem_dxq') : dx;
      await this.stage('bwd.query', () => linearBackward(gpu, { dx: dxq, dw: this.wq.grad, db: this.bq.grad }, { dout: dq, x: sv.x, w: this.wq.value }));
      if (gate) await this.stage('bwd.dx_sum', () => addForward(gpu, { out: dx }, { a: dx, b: dxq }));
    } catch (e) {
      dx.dispose();
      throw e;
    } finally {
      for (const u of tmp) u.dispose();
      this.release();
    }
    return dx;
  }

  /** The slots and weights (T, H, k) of the last forward, while they are kept. */
  lastRead(): { slots: Tensor; weights: Tensor } | null {
    return this.saved ? { slots: this.saved.slots, weights: this.saved.weights } : null;
  }

  /** Token t's reads in the last forward (while it is kept): head, slot and weight, best first per head. */
  async tokenReads(t: number): Promise<{ head: number; slot: number; weight: number }[]> {
    const r = this.lastRead();
    if (!r) throw new EngramError(`MemoryLayer '${this.name}': no forward to report on (tokenReads() goes between forward() and backward())`);
    const T = r.slots.shape[0]!;
    if (!(Number.isInteger(t) && t >= 0 && t < T)) throw new EngramError(`MemoryLayer '${this.name}': token ${t} is not in 0..${T - 1}`);
    return tokenReads(await this.gpu.read(r.slots), await this.gpu.read(r.weights), t, this.H, this.k);
  }

  /** The read health metrics (memory_stats.ts) of the last forward, while it is kept. */
  async stats(): Promise<MemoryReadStats> {
    const r = this.lastRead();
    if (!r) throw new EngramError(`MemoryLayer '${this.name}': no forward to report on (stats() goes between forward() and backward())`);
    return memoryStats(await this.gpu.read(r.slots), await this.gpu.read(r.weights), this.n * this.n, this.k);
  }

  /** Frees what forward kept. */
  release(): void {
    const sv = this.saved;
    if (!sv) return;
    for (const u of [sv.qh, sv.halfIdx, sv.slots, sv.weights, sv.pick, sv.y, sv.z, sv.gatedIn]) u?.dispose();
    if (sv.norm) for (const u of Object.values(sv.norm)) u.dispose();
    sv.shardBag?.dispose();
    this.saved = null;
  }

  dispose(): void {
    this.release();
    disposeParams(this.params);
  }
}
