// the optimizer of memory-layer models (spec §5, Memory Layers at Scale): one fused AdamW, with
// the memory value table as its own parameter group.
//
//   groups   'model' (lr, weight decay) and 'values' (valueLr, 10x lr by default; the same
//            weight decay), both scaled by the caller's schedule factor each step
//   clipping the global gradient norm of each group separately (max-norm 1.0 by default), on
//            the GPU: gradNorm writes the clip coefficient, adamwStep reads it (no readback)
//   state    f32 moments m, v per parameter; an f32 master copy of f16/bf16 parameters (the
//            bf16 value table: an update of 1e-3 relative vanishes in 8 bits of mantissa)
// dense semantics, as the paper: rows of the value table that no token read still move
// (momentum tail and decoupled weight decay) every step.
// sparseValues: only the value rows read since the last step are updated (the table must track
// reads: ValueTable trackReads); the mask is cleared after each step. how it departs from dense
// AdamW: an unread row keeps its value and its moments exactly (no weight decay, no momentum
// tail), and its moments are not decayed for the steps it missed, while the bias corrections
// use the global step count (as torch.optim.SparseAdam: a "lazy" Adam). the gradient norm and
// clipping are unchanged (unread rows have zero gradient either way).

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import type { SafeTensor } from '../io/safetensors.ts';
import { adamwStep, type AdamwParam } from '../kernels/adamw/adamw.ts';
import { scale } from '../kernels/add/add.ts';
import { fill } from '../kernels/copy/copy.ts';
import { gradNorm } from '../kernels/gradnorm/gradnorm.ts';
import { clearRows } from '../kernels/rowmask/rowmask.ts';
import type { Param } from '../model/param.ts';

export interface OptimizerConfig {
  /** peak learning rate of the model group */
  lr: number;
  /** peak learning rate of the value table (spec: value_fixed_lr 1e-3 against 1e-4); default 10 lr */
  valueLr?: number;
  /** decoupled weight decay, every group (spec: 0.1) */
  weightDecay?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** max global gradient norm per group (spec: 1.0); Infinity turns clipping off */
  maxNorm?: number;
  /** update only the value rows read since the last step (see the header) */
  sparseValues?: boolean;
}

interface State {
  param: Param;
  m: Tensor;
  v: Tensor;
  master?: Tensor;
}

/** a state's tensors by kind (the suffix of their names in a checkpoint) */
function kinds(s: State): Record<string, Tensor> {
  return { m: s.m, v: s.v, ...(s.master ? { master: s.master } : {}) };
}

export class AdamW {
  private steps = 0;

  private constructor(
    private readonly gpu: Gpu,
    private readonly states: State[],
    private readonly cfg: Required<OptimizerConfig>,
    /** per group: the global gradient norm and the clip coefficient gradNorm writes */
    private readonly norm: Record<Param['group'], { norm: Tensor; scale: Tensor }>,
  ) {}

  static async create(gpu: Gpu, params: readonly Param[], config: OptimizerConfig): Promise<AdamW> {
    const cfg: Required<OptimizerConfig> = {
      valueLr: 10 * config.lr,
      weightDecay: 0.1,
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-8,
      maxNorm: 1.0,
      sparseValues: false,
      ...config,
    };
    if (cfg.sparseValues) {
      const blind = params.find((p) => p.group === 'values' && !p.rowMask);
      if (blind) throw new EngramError(`AdamW: sparseValues needs the rows read: '${blind.name}' has no read mask (create the ValueTable with trackReads: true)`);
    }
    if (!(cfg.lr >= 0 && cfg.valueLr >= 0)) throw new EngramError(`AdamW: learning rates must be >= 0 (lr ${cfg.lr}, valueLr ${cfg.valueLr})`);
    if (!(cfg.maxNorm > 0)) throw new EngramError(`AdamW: maxNorm must be positive (Infinity: no clipping), got ${cfg.maxNorm}`);
    // everything made so far, freed if a later allocation fails (out of memory)
    const made: Tensor[] = [];
    const tensor = async (shape: readonly number[], label: string) => {
      const t = await gpu.tensor(shape, 'f32', label);
      made.push(t);
      return t;
    };
    try {
      const states: State[] = [];
      for (const param of params) {
        const m = await tensor(param.value.shape, `${param.name}.adam_m`);
        const v = await tensor(param.value.shape, `${param.name}.adam_v`);
        await fill(gpu, m, 0);
        await fill(gpu, v, 0);
        const s: State = { param, m, v };
        if (param.value.dtype !== 'f32') {
          s.master = await tensor(param.value.shape, `${param.name}.master`);
          await scale(gpu, { out: s.master }, { x: param.value });
        }
        states.push(s);
      }
      const pair = async (g: string) => ({ norm: await tensor([1], `${g}.grad_norm`), scale: await tensor([1], `${g}.clip_scale`) });
      return new AdamW(gpu, states, cfg, { model: await pair('model'), values: await pair('values') });
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
  }

  /** steps taken */
  get step(): number {
    return this.steps;
  }

  /**
   * One step: clip each group by its own norm, then AdamW with lr and valueLr times `lrScale`.
   * clipScale: a group's clip coefficient given (its norm not computed here): a group whose norm
   * spans several optimizers (ShardedAdamW: the value table over several GPUs)
   */
  async update(lrScale = 1, o: { clipScale?: Partial<Record<Param['group'], number>> } = {}): Promise<void> {
    const { gpu, cfg } = this;
    this.steps++;
    for (const group of ['model', 'values'] as const) {
      const mine = this.states.filter((s) => s.param.group === group);
      if (mine.length === 0) continue;
      const n = this.norm[group];
      const clip = Number.isFinite(cfg.maxNorm);
      const given = o.clipScale?.[group];
      if (given !== undefined) {
        if (clip) gpu.write(n.scale, [given]);
      } else await gradNorm(gpu, clip ? n : { norm: n.norm }, mine.map((s) => s.param.grad), clip ? { maxNorm: cfg.maxNorm } : {});
      const sparse = group === 'values' && cfg.sparseValues;
      const params: AdamwParam[] = mine.map((s) => ({
        p: s.param.value,
        g: s.param.grad,
        m: s.m,
        v: s.v,
        ...(s.master ? { master: s.master } : {}),
        ...(sparse ? { rows: s.param.rowMask! } : {}),
      }));
      const lr = (group === 'values' ? cfg.valueLr : cfg.lr) * lrScale;
      await adamwStep(gpu, [{ params, lr, weightDecay: cfg.weightDecay }], {
        step: this.steps,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        ...(clip ? { gradScale: n.scale } : {}),
      });
      const masks = mine.flatMap((s) => (s.param.rowMask ? [s.param.rowMask.mask] : []));
      if (masks.length) clearRows(gpu, masks);
    }
  }

  /** the group's gradient norm now (its gradients as they are, before an update), read back */
  async groupNorm(group: Param['group']): Promise<number> {
    const mine = this.states.filter((s) => s.param.group === group);
    if (mine.length === 0) return 0;
    await gradNorm(this.gpu, { norm: this.norm[group].norm }, mine.map((s) => s.param.grad));
    return (await this.gpu.read(this.norm[group].norm))[0]!;
  }

  /** the max global gradient norm per group (Infinity: no clipping) */
  get maxNorm(): number {
    return this.cfg.maxNorm;
  }

  /** The global gradient norms of the last update, per group (before clipping). */
  async gradNorms(): Promise<Record<Param['group'], number>> {
    const read = async (t: Tensor) => (await this.gpu.read(t))[0]!;
    return { model: await read(this.norm.model.norm), values: await read(this.norm.values.norm) };
  }

  /** The state to checkpoint: the step count and every f32 state tensor by `<param>.{m,v,master}`. */
  stateTensors(): { step: number; tensors: Record<string, Tensor> } {
    const tensors: Record<string, Tensor> = {};
    for (const s of this.states) for (const [kind, t] of Object.entries(kinds(s))) tensors[`${s.param.name}.${kind}`] = t;
    return { step: this.steps, tensors };
  }

  /** a parameter's state tensors by kind: m, v and, for an f16/bf16 parameter, its f32 master */
  stateOf(param: Param): Record<string, Tensor> {
    const s = this.states.find((x) => x.param === param);
    if (!s) throw new EngramError(`AdamW.stateOf: '${param.name}' is not one of this optimizer's parameters`);
    return kinds(s);
  }

  /** stateTensors read back: the step count and a checkpoint's F32 tensors (optimizer.safetensors) */
  async stateBytes(): Promise<{ step: number; tensors: Record<string, SafeTensor> }> {
    const { step, tensors } = this.stateTensors();
    const out: Record<string, SafeTensor> = {};
    for (const [name, t] of Object.entries(tensors)) out[name] = { dtype: 'F32', shape: [...t.shape], data: await this.gpu.readRaw(t) };
    return { step, tensors: out };
  }

  /** Restores a checkpointed state: the step and each tensor's f32 bytes (every one must be there). */
  restore(step: number, bytes: (name: string) => Uint8Array | undefined): void {
    const { tensors } = this.stateTensors();
    for (const [name, t] of Object.entries(tensors)) {
      const b = bytes(name);
      if (!b || b.length !== t.byteLength) {
        throw new EngramError(`AdamW.restore: optimizer state '${name}' is ${b ? `${b.length} bytes` : 'missing'}; ${t} needs ${t.byteLength}`);
      }
      this.gpu.writeBytes(t, b);
    }
    this.steps = step;
  }

  dispose(): void {
    for (const s of this.states) for (const t of [s.m, s.v, s.master]) t?.dispose();
    for (const g of Object.values(this.norm)) for (const t of Object.values(g)) t.dispose();
  }
}
