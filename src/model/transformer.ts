// a Llama-style decoder with Memory+ layers (config.ts), forward and backward on the GPU.
//
//   h = embed(ids)                                                   ids (B, T) u32, h (B T, d)
//   per block:  h = h + Wo attn(rope(Wq n1), rope(Wk n1), Wv n1)     n1 = RMSNorm(h) (input_layernorm)
//               h = h + FFN(n2)                                      n2 = RMSNorm(h) (post_attention_layernorm)
//               FFN = Wdown (silu(Wgate n2) * Wup n2), or the block's memory layer
//   logits = Whead RMSNorm(h);  loss = mean cross-entropy against targets (IGNORE_INDEX skipped)
// parameters carry Hugging Face Llama names and layouts (model.layers.{i}.self_attn.q_proj.weight,
// ...; nn.Linear (out, in)), so that a dense checkpoint maps onto LlamaForCausalLM; a memory
// block's parameters are its MemoryLayer's, the value table is shared by all of them. attention
// is causal with grouped-query heads; RoPE in HF's rotate-half layout. init: N(0, 0.02) for
// embeddings and projections, 1 for the norms (the memory layers init as their spec says).
// numerics: f32 activations and parameters; every reduction accumulates in f32, deterministic.
// backward: activation gradients overwrite, parameter gradients add (+=): call zeroGrads between
// optimizer steps; gradient accumulation is several forward/backward pairs between them.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { addForward } from '../kernels/add/add.ts';
import { attentionBackward, attentionForward } from '../kernels/attention/attention.ts';
import { fill } from '../kernels/copy/copy.ts';
import { embeddingBackward, embeddingForward } from '../kernels/embedding/embedding.ts';
import { fillNormal } from '../kernels/init/init.ts';
import { linearBackward, linearForward } from '../kernels/matmul/matmul.ts';
import { rmsnormBackward, rmsnormForward } from '../kernels/rmsnorm/rmsnorm.ts';
import { decodeAttention } from '../kernels/attention/decode_attention.ts';
import { scatterRows } from '../kernels/copy/scatter_rows.ts';
import { appendRows } from '../kernels/copy/append_rows.ts';
import { createRopeTable, ropeBackward, ropeForward } from '../kernels/rope/rope.ts';
import { swigluBackward, swigluForward } from '../kernels/swiglu/swiglu.ts';
import { xentBackward, xentForward } from '../kernels/xent/xent.ts';
import type { ModelConfig } from './config.ts';
import { MemoryLayer } from './memory_layer.ts';
import type { SlotCache } from './slot_cache.ts';
import { createParam, disposeParams, type Param } from './param.ts';
import { ShardedValueTable, type ValueSharding } from './sharded_values.ts';
import { ValueTable } from './value_table.ts';

interface Block {
  inNorm: Param;
  q: Param;
  k: Param;
  v: Param;
  o: Param;
  postNorm: Param;
  ffn: { gate: Param; up: Param; down: Param } | null;
  memory: MemoryLayer | null;
}

/** what a block's forward keeps for its backward */
interface BlockSaved {
  h: Tensor;
  n1: Tensor;
  r1: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  att: Tensor;
  lse: Tensor;
  h1: Tensor;
  n2: Tensor;
  r2: Tensor;
  g?: Tensor;
  u?: Tensor;
  s?: Tensor;
}

/** a block's explicit-memory keys and values in a training forward (not owned by the block) */
interface BlockMemory {
  k: Tensor;
  v: Tensor;
  chunk: number;
  pos0: number;
}

/**
 * explicit memory for a training forward (Memory³'s second stage): per block, keys and values
 * that the sequence's queries attend to before the context (the sink, and at memory blocks the
 * chunk's memories), constants of the step (no gradient flows into them)
 */
export interface TrainMemory {
  /** per block: (B, rows, kvHeads, headDim) f32; rows = nChunks x rows per chunk when `chunk` > 0 */
  blocks: { k: Tensor; v: Tensor; chunk: number }[];
  /**
   * per block, optional: tensors of the blocks' shapes that backward() overwrites with the loss's
   * gradient with respect to the memory's keys and values (else those gradients are dropped: the
   * memory is a constant of the step). Memory³ training passes them on to the references'
   * encoding (encodeBackward)
   */
  grads?: ({ dk: Tensor; dv: Tensor } | null)[];
  /** RoPE position of the sequence's first token (behind the sink and the memories' position range) */
  pos0: number;
}

/**
 * a batch of references run through blocks 0..upTo with everything kept for encodeBackward: what
 * Memory³ training encodes when the loss's gradient is to reach the encoding (the memories' keys
 * and values are then functions of the weights, not constants)
 */
export interface EncodeState {
  B: number;
  T: number;
  ids: Tensor;
  /** per block 0..upTo: its saved activations; keys (after RoPE) in `.k` (B, T, kvHeads, headDim), values in `.v` (B T, kvHeads headDim) */
  blocks: { k: Tensor; v: Tensor }[];
}

/** one block's attention inputs: queries and keys before RoPE, keys after it, values; f32 */
export interface AttentionInputs {
  /** (B, T, heads, headDim) */
  q0: Tensor;
  /** (B, T, kvHeads, headDim) */
  k0: Tensor;
  k: Tensor;
  v: Tensor;
}

/**
 * what a block's queries did in attention: the queries after RoPE (B, T, heads, headDim) and each
 * row's natural-log logsumexp (B, heads, T), so that exp(scale q.k - lse) is the weight a query
 * gave a key (logits' `watch`; Memory³ inspection reads the weights its memories got)
 */
export interface AttentionRows {
  q: Tensor;
  lse: Tensor;
}

/** a Memory+ block's reads in one forward (logits' `watchMemory`): per token, head and pick, the value-table slot and its weight */
export interface MemoryReads {
  /** (B T, heads, topk) u32 */
  slots: Tensor;
  /** (B T, heads, topk) f32, softmax over each head's picks */
  weights: Tensor;
}

/**
 * Keys and values of every block for the positions decoded so far, for `batch` sequences decoded
 * in lockstep (every row has the same length and front sizes): the next tokens' queries attend
 * to them as attention's prefix (every cached position is before them; attention's prefixLen
 * picks the filled rows of each batch row), and to each other causally.
 */
export interface KvCache {
  /** per block, (batch, frontMax[i] + max, NKV, HS) f32: per batch row the front rows, then the context */
  k: Tensor[];
  v: Tensor[];
  /** sequences decoded together */
  batch: number;
  /** context positions filled (in every row) */
  length: number;
  max: number;
  /**
   * per block: rows in front of the context that every new token attends to (setCacheFront; 0
   * unless set). Memory³ puts its attention sink and the retrieved memories' keys and values
   * there; their keys carry their own RoPE positions, so the rows are not positions of the cache
   */
  front: number[];
  /** per block: the front's capacity in rows */
  frontMax: number[];
  /** RoPE position of context row 0 */
  pos0: number;
}

/** positions the RoPE table holds past maxSeqLen: room for a front with its own positions (Memory³'s sink and memories) ahead of the context */
export const EXTRA_POSITIONS = 256;

interface Saved {
  B: number;
  T: number;
  memory?: TrainMemory;
  ids: Tensor;
  targets: Tensor;
  blocks: BlockSaved[];
  hL: Tensor;
  nf: Tensor;
  rf: Tensor;
  logits: Tensor;
  lse: Tensor;
}

export class Transformer {
  private saved: Saved | null = null;

  private constructor(
    private readonly gpu: Gpu,
    readonly config: ModelConfig,
    readonly embed: Param,
    readonly blocks: Block[],
    readonly finalNorm: Param,
    readonly head: Param | null,
    readonly table: ValueTable | null,
    private readonly rope: Tensor,
    /** the value table sharded by columns over several GPUs (create's valueGpus; `table` is then null) */
    readonly shardedTable: ShardedValueTable | null = null,
  ) {}

  /**
   * valueGpus: the memory value table sharded by columns over these GPUs (sharded_values.ts; the
   * model's own GPU may be one of them), the rest of the model on `gpu`; the same values as one
   * table from the same seed. an error for a model without memory layers (no table to shard).
   * valueExchange: the dtype of the column blocks the shards exchange (ShardedValueTable's exchange)
   */
  static async create(gpu: Gpu, config: ModelConfig, seed = 0, o: ValueSharding = {}): Promise<Transformer> {
    const { vocabSize: V, dim: d, heads: NH, kvHeads: NKV, ffnHidden: F } = config;
    const HS = d / NH;
    let k = 0;
    const linear = async (name: string, shape: number[]) => {
      const p = await createParam(gpu, name, shape, 'f32');
      await fillNormal(gpu, p.value, { std: 0.02, seed: seed * 1000 + ++k });
      return p;
    };
    const norm = async (name: string) => {
      const p = await createParam(gpu, name, [d], 'f32');
      await fill(gpu, p.value, 1);
      return p;
    };
    const embed = await linear('model.embed_tokens.weight', [V, d]);
    const mem = config.memory;
    if (o.valueGpus && !mem) throw new EngramError('Transformer: valueGpus shards the memory value table, and this model has no memory layers (config.memory)');
    const tableOptions = mem && { rows: mem.nKeys * mem.nKeys, dim: d, dtype: mem.valueDtype, seed: seed * 1000 + 999 };
    const sharded = tableOptions && o.valueGpus ? await ShardedValueTable.create(o.valueGpus, tableOptions, o.valueExchange) : null;
    const table = tableOptions && !sharded ? await ValueTable.create(gpu, tableOptions) : null;
    const blocks: Block[] = [];
    for (let i = 0; i < config.layers; i++) {
      const at = `model.layers.${i}`;
      const useMemory = mem !== null && mem.layers.includes(i);
      blocks.push({
        inNorm: await norm(`${at}.input_layernorm.weight`),
        q: await linear(`${at}.self_attn.q_proj.weight`, [NH * HS, d]),
        k: await linear(`${at}.self_attn.k_proj.weight`, [NKV * HS, d]),
        v: await linear(`${at}.self_attn.v_proj.weight`, [NKV * HS, d]),
        o: await linear(`${at}.self_attn.o_proj.weight`, [d, NH * HS]),
        postNorm: await norm(`${at}.post_attention_layernorm.weight`),
        ffn: useMemory
          ? null
          : { gate: await linear(`${at}.mlp.gate_proj.weight`, [F, d]), up: await linear(`${at}.mlp.up_proj.weight`, [F, d]), down: await linear(`${at}.mlp.down_proj.weight`, [d, F]) },
        memory:
          useMemory && mem && (table ?? sharded)
            ? await MemoryLayer.create(gpu, `${at}.mlp`, { d, heads: mem.heads, nKeys: mem.nKeys, topk: mem.topk, keyDim: mem.keyDim, gated: mem.gated, qkNorm: mem.qkNorm }, (table ?? sharded)!, seed * 1000 + 500 + i)
            : null,
      });
    }
    const finalNorm = await norm('model.norm.weight');
    const head = config.tiedEmbeddings ? null : await linear('lm_head.weight', [V, d]);
    const rope = await createRopeTable(gpu, config.maxSeqLen + EXTRA_POSITIONS, HS, config.ropeTheta);
    return new Transformer(gpu, config, embed, blocks, finalNorm, head, table, rope, sharded);
  }

  /** every trainable parameter on the model's GPU: the model group, then the value table's chunks (none when sharded: shardedTable's) */
  get params(): Param[] {
    const out: Param[] = [this.embed];
    for (const b of this.blocks) {
      out.push(b.inNorm, b.q, b.k, b.v, b.o, b.postNorm);
      if (b.ffn) out.push(b.ffn.gate, b.ffn.up, b.ffn.down);
      if (b.memory) out.push(...b.memory.params);
    }
    out.push(this.finalNorm);
    if (this.head) out.push(this.head);
    if (this.table) out.push(...this.table.params);
    return out;
  }

  /** the memory layers, in block order */
  get memoryLayers(): MemoryLayer[] {
    return this.blocks.flatMap((b) => (b.memory ? [b.memory] : []));
  }

  /**
   * Mean cross-entropy of ids (B, T) predicting targets (B, T) (u32; IGNORE_INDEX skips a
   * position). Keeps what backward needs; returns the loss as a [1] f32 tensor (the caller's).
   */
  async forward(ids: Tensor, targets: Tensor, memory?: TrainMemory): Promise<Tensor> {
    const { gpu, config: c } = this;
    if (ids.shape.length !== 2 || ids.dtype !== 'u32') throw new EngramError(`Transformer: ids ${ids} must be [B, T]:u32`);
    const [B, T] = ids.shape as [number, number];
    if (T > c.maxSeqLen) throw new EngramError(`Transformer: sequence length ${T} exceeds maxSeqLen ${c.maxSeqLen}`);
    if (targets.dtype !== 'u32' || targets.shape[0] !== B || targets.shape[1] !== T || targets.shape.length !== 2) {
      throw new EngramError(`Transformer: targets ${targets} must be [${B}, ${T}]:u32 like ids`);
    }
    if (memory && memory.blocks.length !== this.blocks.length) throw new EngramError(`Transformer: memory for ${memory.blocks.length} blocks; the model has ${this.blocks.length}`);
    if (memory && !(Number.isInteger(memory.pos0) && memory.pos0 >= 0 && memory.pos0 + T <= c.maxSeqLen + EXTRA_POSITIONS)) {
      throw new EngramError(`Transformer: a sequence from position ${memory.pos0} of ${T} tokens passes the RoPE table's ${c.maxSeqLen + EXTRA_POSITIONS} positions`);
    }
    this.release();
    const N = B * T;
    const take = (shape: number[], label: string) => gpu.scratch.take(shape, 'f32', label);
    let h = await this.embedIds(ids);
    const saved: BlockSaved[] = [];
    for (const [i, blk] of this.blocks.entries()) {
      const m = memory?.blocks[i];
      const r = await this.block(blk, h, B, T, true, m ? { mem: { ...m, pos0: memory!.pos0 } } : {});
      saved.push(r.saved!);
      h = r.h;
    }
    const { nf, rf, logits } = await this.headLogits(h);
    const losses = take([N], 'losses');
    const lse = take([N], 'xent_lse');
    const loss = await gpu.tensor([1], 'f32', 'loss');
    await xentForward(gpu, { losses, loss, lse }, { logits, targets: targets.reshape([N]) });
    losses.dispose();
    this.saved = { B, T, ids, targets, blocks: saved, hL: h, nf, rf, logits, lse, ...(memory ? { memory } : {}) };
    return loss;
  }

  /** Gradients of the last forward's mean loss (times dloss), added into every parameter's grad. */
  async backward(dloss = 1): Promise<void> {
    const sv = this.saved;
    if (!sv) throw new EngramError('Transformer: backward() without a forward() before it');
    const { gpu, config: c } = this;
    const { B, T } = sv;
    const N = B * T;
    const { dim: d, vocabSize: V } = c;
    const take = (shape: number[], label: string) => gpu.scratch.take(shape, 'f32', label);
    try {
      const dlogits = take([N, V], 'dlogits');
      await xentBackward(gpu, { dlogits }, { logits: sv.logits, targets: sv.targets.reshape([N]), lse: sv.lse }, { dloss });
      const dnf = take([N, d], 'dnf');
      const headP = this.head ?? this.embed;
      await linearBackward(gpu, { dx: dnf, dw: headP.grad }, { dout: dlogits, x: sv.nf, w: headP.value });
      dlogits.dispose();
      let dh = take([N, d], 'dh');
      await rmsnormBackward(gpu, { dx: dh, dw: this.finalNorm.grad }, { dout: dnf, x: sv.hL, w: this.finalNorm.value, rstd: sv.rf });
      dnf.dispose();
      for (let i = this.blocks.length - 1; i >= 0; i--) dh = await this.blockBackward(i, sv.blocks[i]!, dh, B, T, { pos0: sv.memory?.pos0 ?? 0, mem: sv.memory?.blocks[i], into: sv.memory?.grads?.[i] ?? null });
      await embeddingBackward(gpu, { dW: this.embed.grad }, { dout: dh.reshape([B, T, d]), ids: sv.ids });
      dh.dispose();
    } finally {
      this.release();
    }
  }

  /**
   * One block's backward: dh (B T, d), the gradient of the block's output (consumed), becomes the
   * returned gradient of its input; parameter gradients are added. o.mem: the block's explicit
   * memory in the forward, whose keys' and values' gradients go to o.into when given. o.extra:
   * gradients of the block's keys (after RoPE, (B, T, kvHeads, headDim)) and values ((B T,
   * kvHeads headDim)) from elsewhere (a memory read from this forward: encodeBackward), added to
   * attention's own.
   */
  private async blockBackward(
    i: number,
    s: BlockSaved,
    dh: Tensor,
    B: number,
    T: number,
    o: { pos0: number; mem?: { k: Tensor; v: Tensor; chunk: number } | undefined; into?: { dk: Tensor; dv: Tensor } | null; extra?: { dk: Tensor; dv: Tensor } },
  ): Promise<Tensor> {
    const { gpu, config: c } = this;
    const N = B * T;
    const { dim: d, heads: NH, kvHeads: NKV, ffnHidden: F } = c;
    const HS = d / NH;
    const take = (shape: number[], label: string) => gpu.scratch.take(shape, 'f32', label);
    const blk = this.blocks[i]!;
    const tmp = take([N, d], 'dtmp');
    // FFN (or memory): dh is the gradient of h2 = h1 + f
    let dn2: Tensor;
    if (blk.memory) {
      dn2 = await blk.memory.backward(dh);
    } else {
      const ffn = blk.ffn!;
      const ds = take([N, F], 'ds');
      await linearBackward(gpu, { dx: ds, dw: ffn.down.grad }, { dout: dh, x: s.s!, w: ffn.down.value });
      const dg = take([N, F], 'dg');
      const du = take([N, F], 'du');
      await swigluBackward(gpu, { dg, du }, { dout: ds, g: s.g!, u: s.u! });
      ds.dispose();
      dn2 = take([N, d], 'dn2');
      await linearBackward(gpu, { dx: dn2, dw: ffn.gate.grad }, { dout: dg, x: s.n2, w: ffn.gate.value });
      await linearBackward(gpu, { dx: tmp, dw: ffn.up.grad }, { dout: du, x: s.n2, w: ffn.up.value });
      await addForward(gpu, { out: dn2 }, { a: dn2, b: tmp });
      dg.dispose();
      du.dispose();
    }
    await rmsnormBackward(gpu, { dx: tmp, dw: blk.postNorm.grad }, { dout: dn2, x: s.h1, w: blk.postNorm.value, rstd: s.r2 });
    dn2.dispose();
    await addForward(gpu, { out: dh }, { a: dh, b: tmp }); // dh1
    // attention: dh1 is the gradient of h1 = h + o
    const datt = take([N, NH * HS], 'datt');
    await linearBackward(gpu, { dx: datt, dw: blk.o.grad }, { dout: dh, x: s.att.reshape([N, NH * HS]), w: blk.o.value });
    const dq = take([B, T, NH, HS], 'dq');
    const dk = take([B, T, NKV, HS], 'dk');
    const dv = take([N, NKV * HS], 'dv');
    const v4 = s.v.reshape([B, T, NKV, HS]);
    const { mem: m, into } = o;
    // explicit memory: its keys' and values' gradients go to `into` when given, else are dropped
    const dpk = m && (into?.dk ?? take(m.k.shape as number[], 'dpk'));
    const dpv = m && (into?.dv ?? take(m.v.shape as number[], 'dpv'));
    await attentionBackward(
      gpu,
      { dq, dk, dv: dv.reshape([B, T, NKV, HS]), ...(dpk && dpv ? { dpk, dpv } : {}) },
      { dout: datt.reshape([B, T, NH, HS]), q: s.q, k: s.k, v: v4, out: s.att, lse: s.lse, ...(m ? { pk: m.k, pv: m.v } : {}) },
      m ? { prefixChunk: m.chunk } : {},
    );
    if (!into) {
      dpk?.dispose();
      dpv?.dispose();
    }
    datt.dispose();
    if (o.extra) {
      await addForward(gpu, { out: dk }, { a: dk, b: o.extra.dk });
      await addForward(gpu, { out: dv }, { a: dv, b: o.extra.dv });
    }
    const dqp = take([N, NH * HS], 'dq_proj');
    const dkp = take([N, NKV * HS], 'dk_proj');
    const pos0 = o.pos0;
    await ropeBackward(gpu, { dx: dqp.reshape([B, T, NH, HS]) }, { dout: dq, table: this.rope }, { pos0 });
    await ropeBackward(gpu, { dx: dkp.reshape([B, T, NKV, HS]) }, { dout: dk, table: this.rope }, { pos0 });
    dq.dispose();
    dk.dispose();
    const dn1 = take([N, d], 'dn1');
    await linearBackward(gpu, { dx: dn1, dw: blk.q.grad }, { dout: dqp, x: s.n1, w: blk.q.value });
    await linearBackward(gpu, { dx: tmp, dw: blk.k.grad }, { dout: dkp, x: s.n1, w: blk.k.value });
    await addForward(gpu, { out: dn1 }, { a: dn1, b: tmp });
    await linearBackward(gpu, { dx: tmp, dw: blk.v.grad }, { dout: dv, x: s.n1, w: blk.v.value });
    await addForward(gpu, { out: dn1 }, { a: dn1, b: tmp });
    for (const u of [dqp, dkp, dv]) u.dispose();
    await rmsnormBackward(gpu, { dx: tmp, dw: blk.inNorm.grad }, { dout: dn1, x: s.h, w: blk.inNorm.value, rstd: s.r1 });
    dn1.dispose();
    const dh0 = take([N, d], 'dh');
    await addForward(gpu, { out: dh0 }, { a: dh, b: tmp });
    dh.dispose();
    tmp.dispose();
    return dh0;
  }

  /** h (B T, d) = the embedding rows of ids (B, T) */
  private async embedIds(ids: Tensor): Promise<Tensor> {
    const [B, T] = ids.shape as [number, number];
    const h = this.gpu.scratch.take([B * T, this.config.dim], 'f32', 'h');
    await embeddingForward(this.gpu, { out: h.reshape([B, T, this.config.dim]) }, { W: this.embed.value, ids });
    return h;
  }

  /** the final RMSNorm and the output projection of h (B T, d): logits (B T, V) */
  private async headLogits(h: Tensor): Promise<{ nf: Tensor; rf: Tensor; logits: Tensor }> {
    const { gpu, config: c } = this;
    const N = h.shape[0]!;
    const nf = gpu.scratch.take([N, c.dim], 'f32', 'nf');
    const rf = gpu.scratch.take([N], 'f32', 'rf');
    await rmsnormForward(gpu, { out: nf, rstd: rf }, { x: h, w: this.finalNorm.value }, c.normEps);
    const logits = gpu.scratch.take([N, c.vocabSize], 'f32', 'logits');
    await linearForward(gpu, { y: logits }, { x: nf, w: (this.head ?? this.embed).value });
    return { nf, rf, logits };
  }

  /**
   * One block on h (B T, d), returning the next h (the caller's). keep: every activation the
   * backward needs stays in `saved` (h included; the memory layer keeps its own); otherwise
   * they are freed here and h stays the caller's. opts.cache: this block's keys and values of the
   * front and the P positions before, which the new queries attend to as a prefix; the new keys
   * and values are appended after them. opts.mem: explicit memory (training). opts.tap and .watch see
   * the attention's inputs and its queries and logsumexps.
   */
  private async block(
    blk: Block,
    h: Tensor,
    B: number,
    T: number,
    keep: boolean,
    opts: {
      cache?: { k: Tensor; v: Tensor; P: number; front: number; pos0: number };
      mem?: BlockMemory;
      tap?: (t: AttentionInputs) => Promise<void>;
      watch?: (t: AttentionRows) => Promise<void>;
      watchMemory?: (r: MemoryReads) => Promise<void>;
      slot?: { cache: SlotCache; layer: number };
    } = {},
  ): Promise<{ h: Tensor; saved: BlockSaved | null }> {
    const { cache, mem, tap, watch, watchMemory, slot } = opts;
    const { gpu, config: c } = this;
    const N = B * T;
    const { dim: d, heads: NH, kvHeads: NKV, ffnHidden: F } = c;
    const HS = d / NH;
    const P = cache?.P ?? 0;
    // rows this block's new tokens attend to before themselves: the front, then the cached context
    const R = (cache?.front ?? 0) + P;
    const pos0 = (cache?.pos0 ?? mem?.pos0 ?? 0) + P;
    const take = (shape: number[], label: string) => gpu.scratch.take(shape, 'f32', label);
    const n1 = take([N, d], 'n1');
    const r1 = take([N], 'r1');
    await rmsnormForward(gpu, { out: n1, rstd: r1 }, { x: h, w: blk.inNorm.value }, c.normEps);
    const qp = take([N, NH * HS], 'q_proj');
    const kp = take([N, NKV * HS], 'k_proj');
    const v = take([N, NKV * HS], 'v');
    await linearForward(gpu, { y: qp }, { x: n1, w: blk.q.value });
    await linearForward(gpu, { y: kp }, { x: n1, w: blk.k.value });
    await linearForward(gpu, { y: v }, { x: n1, w: blk.v.value });
    const q = take([B, T, NH, HS], 'q');
    const k = take([B, T, NKV, HS], 'k');
    if (slot) {
      // one token a row, each at its own position: the batch goes through RoPE as one sequence of B positions
      const positions = slot.cache.pos.leading([B]);
      await ropeForward(gpu, { out: q.reshape([1, B, NH, HS]) }, { x: qp.reshape([1, B, NH, HS]), table: this.rope }, { positions });
      await ropeForward(gpu, { out: k.reshape([1, B, NKV, HS]) }, { x: kp.reshape([1, B, NKV, HS]), table: this.rope }, { positions });
    } else {
      await ropeForward(gpu, { out: q }, { x: qp.reshape([B, T, NH, HS]), table: this.rope }, { pos0 });
      await ropeForward(gpu, { out: k }, { x: kp.reshape([B, T, NKV, HS]), table: this.rope }, { pos0 });
    }
    if (tap) await tap({ q0: qp.reshape([B, T, NH, HS]), k0: kp.reshape([B, T, NKV, HS]), k, v: v.reshape([B, T, NKV, HS]) });
    qp.dispose();
    kp.dispose();
    const att = take([B, T, NH, HS], 'att');
    const lse = take([B, NH, T], 'att_lse');
    // with a cache, the prefix is the whole cache tensor (batch rows S apart) of which R rows are filled
    const prefix = cache && R > 0 ? { pk: cache.k, pv: cache.v } : mem ? { pk: mem.k, pv: mem.v } : {};
    if (slot) {
      // append each row's key and value at its own length, then attend over exactly its rows
      const { cache: sc, layer } = slot;
      const S = sc.frontMax[layer]! + sc.max;
      const width = NKV * HS;
      await scatterRows(gpu, { dst: sc.k[layer]!.reshape([sc.slots * S, width]) }, { src: k.reshape([B, width]), idx: sc.dst }, { base: layer * sc.slots });
      await scatterRows(gpu, { dst: sc.v[layer]!.reshape([sc.slots * S, width]) }, { src: v.reshape([B, width]), idx: sc.dst }, { base: layer * sc.slots });
      const kv = (t: Tensor) => t.leading([B, S, NKV, HS]);
      await decodeAttention(gpu, { out: att.reshape([B, NH, HS]) }, { q: q.reshape([B, NH, HS]), k: kv(sc.k[layer]!), v: kv(sc.v[layer]!), rows: sc.rows }, { F: sc.frontMax[layer]!, rowBase: layer * sc.slots });
    } else {
      // the new keys and values go into the cache first: attentionForward reads only its R rows
      // before them, and a lockstep decode step (one query a row) attends over the cache alone
      if (cache) {
        await appendRows(gpu, { dst: cache.k }, { src: k }, { at: R });
        await appendRows(gpu, { dst: cache.v }, { src: v.reshape([B, T, NKV, HS]) }, { at: R });
      }
      // decodeAttention has no logsumexp, so not when watched
      if (cache && T === 1 && !watch) await decodeAttention(gpu, { out: att.reshape([B, NH, HS]) }, { q: q.reshape([B, NH, HS]), k: cache.k, v: cache.v }, { F: cache.front, lengths: [cache.front, P + 1] });
      else await attentionForward(gpu, { out: att, lse }, { q, k, v: v.reshape([B, T, NKV, HS]), ...prefix }, mem ? { prefixChunk: mem.chunk } : cache && R > 0 ? { prefixLen: R } : {});
    }
    if (watch) await watch({ q, lse });
    const o = take([N, d], 'o');
    await linearForward(gpu, { y: o }, { x: att.reshape([N, NH * HS]), w: blk.o.value });
    const h1 = take([N, d], 'h1');
    await addForward(gpu, { out: h1 }, { a: h, b: o });
    o.dispose();
    const n2 = take([N, d], 'n2');
    const r2 = take([N], 'r2');
    await rmsnormForward(gpu, { out: n2, rstd: r2 }, { x: h1, w: blk.postNorm.value }, c.normEps);
    const s: BlockSaved = { h, n1, r1, q, k, v, att, lse, h1, n2, r2 };
    let f: Tensor;
    if (blk.memory) {
      f = await blk.memory.forward(n2);
      const read = watchMemory && blk.memory.lastRead();
      if (read) await watchMemory(read);
      if (!keep) blk.memory.release();
    } else {
      const ffn = blk.ffn!;
      s.g = take([N, F], 'gate');
      s.u = take([N, F], 'up');
      s.s = take([N, F], 'swiglu');
      await linearForward(gpu, { y: s.g }, { x: n2, w: ffn.gate.value });
      await linearForward(gpu, { y: s.u }, { x: n2, w: ffn.up.value });
      await swigluForward(gpu, { out: s.s }, { g: s.g, u: s.u });
      f = take([N, d], 'ffn_out');
      await linearForward(gpu, { y: f }, { x: s.s, w: ffn.down.value });
    }
    const h2 = take([N, d], 'h');
    await addForward(gpu, { out: h2 }, { a: h1, b: f });
    f.dispose();
    if (keep) return { h: h2, saved: s };
    for (const [name, t] of Object.entries(s)) if (name !== 'h') (t as Tensor).dispose();
    return { h: h2, saved: null };
  }

  /**
   * An empty cache for up to `max` context positions (default maxSeqLen). o.frontMax: per block,
   * rows kept in front of the context (default none); o.pos0: the RoPE position of the first
   * context token (default 0; pos0 + max may reach maxSeqLen + EXTRA_POSITIONS); o.batch:
   * sequences decoded in lockstep (default 1).
   */
  async createCache(max = this.config.maxSeqLen, o: { frontMax?: readonly number[]; pos0?: number; batch?: number } = {}): Promise<KvCache> {
    const { gpu, config: c } = this;
    if (!(Number.isInteger(max) && max > 0 && max <= c.maxSeqLen)) throw new EngramError(`Transformer: a cache of ${max} positions; 1..maxSeqLen ${c.maxSeqLen}`);
    const batch = o.batch ?? 1;
    if (!(Number.isInteger(batch) && batch > 0)) throw new EngramError(`Transformer: a cache for batch ${batch}; a positive whole number of sequences`);
    const pos0 = o.pos0 ?? 0;
    if (!(Number.isInteger(pos0) && pos0 >= 0 && pos0 + max <= c.maxSeqLen + EXTRA_POSITIONS)) {
      throw new EngramError(`Transformer: a cache whose context starts at position ${pos0} and holds ${max} positions passes the RoPE table's ${c.maxSeqLen + EXTRA_POSITIONS} positions`);
    }
    const frontMax = o.frontMax ? [...o.frontMax] : this.blocks.map(() => 0);
    if (frontMax.length !== this.blocks.length || frontMax.some((f) => !(Number.isInteger(f) && f >= 0))) {
      throw new EngramError(`Transformer: frontMax needs a whole number >= 0 for each of the ${this.blocks.length} blocks, got [${frontMax.join(', ')}]`);
    }
    const HS = c.dim / c.heads;
    const k: Tensor[] = [];
    const v: Tensor[] = [];
    for (let i = 0; i < this.blocks.length; i++) {
      k.push(await gpu.tensor([batch, frontMax[i]! + max, c.kvHeads, HS], 'f32', `cache.k.${i}`));
      v.push(await gpu.tensor([batch, frontMax[i]! + max, c.kvHeads, HS], 'f32', `cache.v.${i}`));
    }
    return { k, v, batch, length: 0, max, front: this.blocks.map(() => 0), frontMax, pos0 };
  }

  /**
   * Makes block `layer`'s front `rows` long, moving the cached context behind it (through a
   * scratch copy: a buffer cannot copy onto itself); the front rows themselves are the caller's
   * to write (rows kept from before stay as they were). setCacheFront writes them from the host.
   */
  resizeCacheFront(cache: KvCache, layer: number, rows: number): void {
    const { gpu, config: c } = this;
    this.checkBlock(layer);
    if (!(Number.isInteger(rows) && rows >= 0)) throw new EngramError(`Transformer: ${rows} front rows for block ${layer}: expected a whole number >= 0`);
    if (rows > cache.frontMax[layer]!) throw new EngramError(`Transformer: ${rows} front rows for block ${layer}, which has room for ${cache.frontMax[layer]}`);
    const width = c.kvHeads * (c.dim / c.heads);
    const old = cache.front[layer]!;
    const P = cache.length;
    const row = width * 4;
    const S = cache.k[layer]!.shape[1]!;
    if (rows !== old && P > 0) {
      for (const t of [cache.k[layer]!, cache.v[layer]!]) {
        const tmp = gpu.scratch.take([P, width], 'f32', 'cache_move');
        gpu.encode((enc) => {
          for (let b = 0; b < cache.batch; b++) {
            enc.copyBufferToBuffer(t.buffer, t.offset + (b * S + old) * row, tmp.buffer, tmp.offset, P * row);
            enc.copyBufferToBuffer(tmp.buffer, tmp.offset, t.buffer, t.offset + (b * S + rows) * row, P * row);
          }
        });
        tmp.dispose();
      }
    }
    cache.front[layer] = rows;
  }

  /**
   * Sets block `layer`'s front rows: k and v hold, for each of the cache's batch rows in turn,
   * rows x (kvHeads, headDim) f32 (the same row count for every batch row), their keys already
   * rotated. A front of another size moves the cached context behind it (resizeCacheFront).
   */
  async setCacheFront(cache: KvCache, layer: number, k: Float32Array, v: Float32Array): Promise<void> {
    const { gpu, config: c } = this;
    const HS = c.dim / c.heads;
    const width = c.kvHeads * HS;
    const B = cache.batch;
    if (k.length !== v.length || k.length % (width * B) !== 0) {
      throw new EngramError(`Transformer: front keys (${k.length}) and values (${v.length}) must be the same whole number of rows of ${width} for each of the cache's ${B} batch rows`);
    }
    const rows = k.length / (width * B);
    this.resizeCacheFront(cache, layer, rows);
    const row = width * 4;
    const S = cache.k[layer]!.shape[1]!;
    gpu.flush();
    if (rows > 0) {
      for (let b = 0; b < B; b++) {
        const at = b * rows * width;
        gpu.device.queue.writeBuffer(cache.k[layer]!.buffer, cache.k[layer]!.offset + b * S * row, k as Float32Array<ArrayBuffer>, at, rows * width);
        gpu.device.queue.writeBuffer(cache.v[layer]!.buffer, cache.v[layer]!.offset + b * S * row, v as Float32Array<ArrayBuffer>, at, rows * width);
      }
    }
  }

  /**
   * Logits (B T, V) of ids (B, T), for inference: nothing is kept for a backward. With a cache
   * (B = its batch), the ids continue the cached positions and their keys and values are appended.
   * `watch` sees each block's queries and attention logsumexps (valid until it returns);
   * `watchMemory` each Memory+ block's reads: the slots and weights (B T, heads, topk) it picked.
   */
  async logits(ids: Tensor, cache?: KvCache, watch?: (layer: number, t: AttentionRows) => Promise<void>, watchMemory?: (layer: number, r: MemoryReads) => Promise<void>): Promise<Tensor> {
    const c = this.config;
    if (ids.shape.length !== 2 || ids.dtype !== 'u32') throw new EngramError(`Transformer: ids ${ids} must be [B, T]:u32`);
    const [B, T] = ids.shape as [number, number];
    const P = cache?.length ?? 0;
    if (cache && B !== cache.batch) throw new EngramError(`Transformer: a KV cache of batch ${cache.batch} continues ${cache.batch} sequences, got B = ${B}`);
    if (P + T > (cache?.max ?? c.maxSeqLen)) throw new EngramError(`Transformer: ${P} cached + ${T} new positions exceed ${cache?.max ?? c.maxSeqLen}`);
    let h = await this.embedIds(ids);
    for (const [i, blk] of this.blocks.entries()) {
      const r = await this.block(blk, h, B, T, false, {
        ...(cache ? { cache: { k: cache.k[i]!, v: cache.v[i]!, P, front: cache.front[i]!, pos0: cache.pos0 } } : {}),
        ...(watch ? { watch: (t: AttentionRows) => watch(i, t) } : {}),
        ...(watchMemory ? { watchMemory: (r: MemoryReads) => watchMemory(i, r) } : {}),
      });
      h.dispose();
      h = r.h;
    }
    const { nf, rf, logits } = await this.headLogits(h);
    for (const u of [h, nf, rf]) u.dispose();
    if (cache) cache.length += T;
    return logits;
  }

  /**
   * Logits (B, V) of one new token in each of the first B slots of a SlotCache (slot_cache.ts),
   * whose step tensors writeSlotStep wrote: each row's token goes at its own position and
   * attends to exactly its own front and context. ids (B, 1) u32; an idle slot's row computes
   * garbage that nothing reads (its key is not stored). The caller advances the slots' lengths.
   */
  async decodeSlots(ids: Tensor, cache: SlotCache, watchMemory?: (layer: number, r: MemoryReads) => Promise<void>): Promise<Tensor> {
    if (ids.shape.length !== 2 || ids.shape[1] !== 1 || ids.dtype !== 'u32') throw new EngramError(`Transformer: decodeSlots takes ids [B, 1]:u32, got ${ids}`);
    const B = ids.shape[0]!;
    if (B > cache.slots) throw new EngramError(`Transformer: ${B} rows for a slot cache of ${cache.slots}`);
    if (cache.frontMax.length !== this.blocks.length) throw new EngramError(`Transformer: a slot cache of ${cache.frontMax.length} blocks; the model has ${this.blocks.length}`);
    let h = await this.embedIds(ids);
    for (const [i, blk] of this.blocks.entries()) {
      const r = await this.block(blk, h, B, 1, false, { slot: { cache, layer: i }, ...(watchMemory ? { watchMemory: (m: MemoryReads) => watchMemory(i, m) } : {}) });
      h.dispose();
      h = r.h;
    }
    const { nf, rf, logits } = await this.headLogits(h);
    for (const u of [h, nf, rf]) u.dispose();
    return logits;
  }

  /**
   * Runs ids (B, T) at positions 0..T-1 through the blocks up to the last of `layers` (nothing is
   * kept for a backward) and hands `visit` each listed block's attention inputs, valid only until
   * visit returns. Memory³ writing reads them: it scores tokens with q0 and k0 and stores k and v.
   */
  async attentionInputs(ids: Tensor, layers: readonly number[], visit: (layer: number, t: AttentionInputs) => Promise<void>): Promise<void> {
    const want = new Set(layers);
    for (const l of want) this.checkBlock(l);
    if (want.size === 0) return;
    await this.firstBlocks(ids, Math.max(...want), false, visit, (i) => want.has(i));
  }

  /**
   * ids (B, T) at positions 0.. through blocks 0..upTo, keeping what encodeBackward needs (the
   * caller's to free with it or disposeEncode); `visit` sees each block's attention inputs as in
   * attentionInputs. Dense blocks only: a Memory+ block keeps one forward's state, the training
   * forward's.
   */
  async encodeForward(ids: Tensor, upTo: number, visit?: (layer: number, t: AttentionInputs) => Promise<void>): Promise<EncodeState> {
    this.checkBlock(upTo);
    if (this.blocks.slice(0, upTo + 1).some((b) => b.memory)) throw new EngramError(`Transformer: encodeForward runs dense blocks only; blocks 0..${upTo} include a Memory+ block (train without gradients into the references' encoding)`);
    const blocks = await this.firstBlocks(ids, upTo, true, visit);
    const [B, T] = ids.shape as [number, number];
    return { B, T, ids, blocks };
  }

  /**
   * ids (B, T) at positions 0.. through blocks 0..upTo (attentionInputs, encodeForward): `visit`
   * sees the attention inputs of the blocks `tapped` names; with keep, every block's activations
   * are kept and returned (else freed as it goes)
   */
  private async firstBlocks(
    ids: Tensor,
    upTo: number,
    keep: boolean,
    visit?: (layer: number, t: AttentionInputs) => Promise<void>,
    tapped: (layer: number) => boolean = () => true,
  ): Promise<BlockSaved[]> {
    if (ids.shape.length !== 2 || ids.dtype !== 'u32') throw new EngramError(`Transformer: ids ${ids} must be [B, T]:u32`);
    const [B, T] = ids.shape as [number, number];
    if (T > this.config.maxSeqLen) throw new EngramError(`Transformer: ${T} positions exceed maxSeqLen ${this.config.maxSeqLen}`);
    let h = await this.embedIds(ids);
    const saved: BlockSaved[] = [];
    try {
      for (let i = 0; i <= upTo; i++) {
        const r = await this.block(this.blocks[i]!, h, B, T, keep, visit && tapped(i) ? { tap: (t) => visit(i, t) } : {});
        if (keep) saved.push(r.saved!); // the block's input h is kept with it
        else h.dispose();
        h = r.h;
      }
    } catch (e) {
      disposeSaved(saved);
      throw e;
    } finally {
      h.dispose(); // the last block's output (after a failure: the failed block's input); nothing reads it
    }
    return saved;
  }

  /**
   * Adds into the parameters' gradients what flows back from gradients of the encoded blocks' keys
   * and values (grads[i], shaped as EncodeState's k and v; null: none for that block), then frees
   * the state.
   */
  async encodeBackward(state: EncodeState, grads: readonly ({ dk: Tensor; dv: Tensor } | null)[]): Promise<void> {
    const { gpu, config: c } = this;
    const { B, T } = state;
    const saved = state.blocks as BlockSaved[];
    try {
      if (grads.length !== saved.length) throw new EngramError(`Transformer: encodeBackward takes a gradient (or null) for each of the ${saved.length} encoded blocks, got ${grads.length}`);
      let dh = gpu.scratch.take([B * T, c.dim], 'f32', 'dh');
      await fill(gpu, dh, 0); // nothing reads the last block's output
      for (let i = saved.length - 1; i >= 0; i--) {
        const g = grads[i];
        dh = await this.blockBackward(i, saved[i]!, dh, B, T, { pos0: 0, ...(g ? { extra: g } : {}) });
      }
      await embeddingBackward(gpu, { dW: this.embed.grad }, { dout: dh.reshape([B, T, c.dim]), ids: state.ids });
      dh.dispose();
    } finally {
      disposeEncode(state);
    }
  }

  private checkBlock(layer: number): void {
    if (!(Number.isInteger(layer) && layer >= 0 && layer < this.blocks.length)) throw new EngramError(`Transformer: layer ${layer} is not in 0..${this.blocks.length - 1}`);
  }

  /** Frees what forward kept. */
  release(): void {
    const sv = this.saved;
    if (!sv) return;
    disposeSaved(sv.blocks);
    for (const t of [sv.hL, sv.nf, sv.rf, sv.logits, sv.lse]) t.dispose();
    for (const m of this.memoryLayers) m.release();
    this.saved = null;
  }

  dispose(): void {
    this.release();
    for (const m of this.memoryLayers) m.dispose();
    const own = this.params.filter((p) => p.group === 'model' && !this.memoryLayers.some((m) => m.params.includes(p)));
    disposeParams(own);
    this.table?.dispose();
    this.shardedTable?.dispose();
    this.rope.dispose();
  }
}

/** frees an EncodeState's activations (encodeBackward does it itself) */
export function disposeEncode(state: EncodeState): void {
  disposeSaved(state.blocks);
  state.blocks.length = 0;
}

/** frees blocks' saved activations */
function disposeSaved(blocks: readonly object[]): void {
  for (const s of blocks) for (const t of Object.values(s)) (t as Tensor).dispose();
}
