// the model's JSON config: a Llama-style decoder with Memory+ layers replacing the FFN of some
// blocks, all reading one shared value table. parseModelConfig checks a parsed JSON value and
// fills defaults; every problem is listed in one ModelConfigError, by field, with what is
// allowed (the way zod reports).
//
// memory placement (spec §1, paper): `layers` lists the blocks explicitly, or `count` and
// `stride` place that many layers centred in the stack with a fixed stride
// (24 layers, 3 at stride 8: blocks 4, 12, 20, the paper's config).

import { EngramError } from '../gpu/errors.ts';

export interface MemoryConfig {
  /** blocks whose FFN is a memory layer */
  layers: number[];
  /** sub-keys per half per head: the table has nKeys^2 rows */
  nKeys: number;
  heads: number;
  topk: number;
  keyDim: number;
  gated: boolean;
  qkNorm: boolean;
  valueDtype: 'f32' | 'f16' | 'bf16';
}

export interface ModelConfig {
  vocabSize: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  /** SwiGLU hidden size */
  ffnHidden: number;
  maxSeqLen: number;
  ropeTheta: number;
  normEps: number;
  tiedEmbeddings: boolean;
  memory: MemoryConfig | null;
}

export class ModelConfigError extends EngramError {}

/** Centred placement of `count` blocks at `stride` in a stack of `layers` (the paper's). */
export function centredLayers(layers: number, count: number, stride: number): number[] {
  const span = (count - 1) * stride;
  const first = Math.floor((layers - span) / 2);
  return Array.from({ length: count }, (_, i) => first + i * stride);
}

/** a dense Llama of a width and depth (no memory layers, tied embeddings) */
export interface DenseShape {
  vocabSize: number;
  dim: number;
  layers: number;
  maxSeqLen: number;
  /** dims per attention head (default 64): heads = dim / headDim */
  headDim?: number;
  /** query heads per KV head (default 2) */
  kvGroup?: number;
  /** the SwiGLU hidden size is 8 dim / 3 rounded to a multiple of this (default 64) */
  ffnMultiple?: number;
}

/** the config of a dense model of that shape: dim / headDim heads, a KV head per kvGroup of them, SwiGLU hidden 8 dim / 3 rounded to ffnMultiple */
export function denseConfig(s: DenseShape): ModelConfig {
  const { headDim = 64, kvGroup = 2, ffnMultiple = 64 } = s;
  const heads = s.dim / headDim;
  return parseModelConfig({
    vocabSize: s.vocabSize,
    dim: s.dim,
    layers: s.layers,
    heads,
    kvHeads: Math.max(1, heads / kvGroup),
    ffnHidden: Math.max(ffnMultiple, ffnMultiple * Math.round((8 * s.dim) / 3 / ffnMultiple)),
    maxSeqLen: s.maxSeqLen,
    tiedEmbeddings: true,
  });
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v);

export function parseModelConfig(json: unknown): ModelConfig {
  const errors: string[] = [];
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ModelConfigError('model config: expected a JSON object');
  const o = json as Record<string, unknown>;
  const known = new Set(['vocabSize', 'dim', 'layers', 'heads', 'kvHeads', 'ffnHidden', 'maxSeqLen', 'ropeTheta', 'normEps', 'tiedEmbeddings', 'memory']);
  for (const k of Object.keys(o)) if (!known.has(k)) errors.push(`${k}: unknown field (fields: ${[...known].join(', ')})`);
  const int = (src: Record<string, unknown>, path: string, key: string, min: number, dflt?: number): number => {
    const v = src[key] ?? dflt;
    if (!isInt(v) || v < min) {
      errors.push(`${path}${key}: expected an integer >= ${min}, got ${JSON.stringify(src[key])}`);
      return min;
    }
    return v;
  };
  const num = (key: string, dflt: number): number => {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) {
      errors.push(`${key}: expected a positive number, got ${JSON.stringify(o[key])}`);
      return dflt;
    }
    return v;
  };
  const dim = int(o, '', 'dim', 2);
  const heads = int(o, '', 'heads', 1);
  const c: ModelConfig = {
    vocabSize: int(o, '', 'vocabSize', 2),
    dim,
    layers: int(o, '', 'layers', 1),
    heads,
    kvHeads: int(o, '', 'kvHeads', 1, heads),
    ffnHidden: int(o, '', 'ffnHidden', 1),
    maxSeqLen: int(o, '', 'maxSeqLen', 1),
    ropeTheta: num('ropeTheta', 10000),
    normEps: num('normEps', 1e-5),
    tiedEmbeddings: o['tiedEmbeddings'] === undefined ? false : o['tiedEmbeddings'] === true,
    memory: null,
  };
  if (o['tiedEmbeddings'] !== undefined && typeof o['tiedEmbeddings'] !== 'boolean') errors.push(`tiedEmbeddings: expected true or false`);
  if (dim % heads !== 0) errors.push(`dim ${dim} must be a multiple of heads ${heads} (head dim = dim / heads)`);
  else if ((dim / heads) % 2 !== 0) errors.push(`head dim ${dim / heads} (dim / heads) must be even for RoPE`);
  if (heads % c.kvHeads !== 0) errors.push(`heads ${heads} must be a multiple of kvHeads ${c.kvHeads} (grouped-query attention)`);
  const m = o['memory'];
  if (m !== undefined && m !== null) {
    if (typeof m !== 'object' || Array.isArray(m)) errors.push('memory: expected an object or null');
    else c.memory = parseMemory(m as Record<string, unknown>, c, int, errors);
  }
  if (errors.length) throw new ModelConfigError(`model config has ${errors.length} problem${errors.length > 1 ? 's' : ''}:\n  ${errors.join('\n  ')}`);
  return c;
}

function parseMemory(
  m: Record<string, unknown>,
  c: ModelConfig,
  int: (src: Record<string, unknown>, path: string, key: string, min: number, dflt?: number) => number,
  errors: string[],
): MemoryConfig {
  const known = new Set(['layers', 'count', 'stride', 'nKeys', 'heads', 'topk', 'keyDim', 'gated', 'qkNorm', 'valueDtype']);
  for (const k of Object.keys(m)) if (!known.has(k)) errors.push(`memory.${k}: unknown field (fields: ${[...known].join(', ')})`);
  let layers: number[] = [];
  if (m['layers'] !== undefined) {
    const l = m['layers'];
    if (!Array.isArray(l) || !l.every(isInt)) errors.push(`memory.layers: expected a list of block indices, got ${JSON.stringify(l)}`);
    else layers = l;
  } else {
    const count = int(m, 'memory.', 'count', 1, 1);
    const stride = int(m, 'memory.', 'stride', 1, 1);
    layers = centredLayers(c.layers, count, stride);
  }
  const bad = layers.filter((i) => !(i >= 0 && i < c.layers));
  if (bad.length) errors.push(`memory.layers ${JSON.stringify(layers)}: blocks ${bad.join(', ')} are outside 0..${c.layers - 1}`);
  if (new Set(layers).size !== layers.length) errors.push(`memory.layers ${JSON.stringify(layers)}: a block appears twice`);
  const nKeys = int(m, 'memory.', 'nKeys', 1, 1024);
  const topk = int(m, 'memory.', 'topk', 1, 32);
  const keyDim = int(m, 'memory.', 'keyDim', 2, 512);
  if (topk > nKeys) errors.push(`memory.topk ${topk} exceeds memory.nKeys ${nKeys}`);
  if (topk > 64) errors.push(`memory.topk ${topk}: at most 64`);
  if (nKeys > 4096) errors.push(`memory.nKeys ${nKeys}: at most 4096 (a table of 2^24 rows)`);
  if (keyDim % 2 !== 0) errors.push(`memory.keyDim ${keyDim} must be even (two query halves)`);
  const vd = m['valueDtype'] ?? 'bf16';
  if (vd !== 'f32' && vd !== 'f16' && vd !== 'bf16') errors.push(`memory.valueDtype: expected "f32", "f16" or "bf16", got ${JSON.stringify(vd)}`);
  const bool = (key: string, dflt: boolean): boolean => {
    const v = m[key] ?? dflt;
    if (typeof v !== 'boolean') errors.push(`memory.${key}: expected true or false`);
    return v === true;
  };
  return {
    layers: [...layers].sort((a, b) => a - b),
    nKeys,
    heads: int(m, 'memory.', 'heads', 1, 4),
    topk,
    keyDim,
    gated: bool('gated', true),
    qkNorm: bool('qkNorm', false),
    valueDtype: vd as MemoryConfig['valueDtype'],
  };
}
