// a model checkpoint folder: model.safetensors + config.json (+ tokenizer.json and anything the
// trainer adds), written atomically with checksums (io/checkpoint.ts).
//
// model.safetensors holds every parameter by its name: the dense ones with Hugging Face Llama
// names and layouts (F32), the memory layers' as the spec's code names them, and the shared
// value table whole as `model.memory_values` [N, d] in its own dtype (the chunking is the
// device's business and is redone on load). config.json is a Hugging Face LlamaConfig
// (architectures LlamaForCausalLM) plus an "engram" key with the full engram config, so a
// checkpoint without memory layers loads in transformers as is; a folder with only HF fields
// (a dense HF Llama) loads here too.
//
// modelFromFiles builds a model from the files already in memory (what a browser fetched); it and
// this module use no Node API: io/checkpoint.ts (node:fs, node:crypto) is imported by saveModel and
// loadModel only when they run, so that a browser bundle never loads it.

import type { Gpu } from '../gpu/device.ts';
import type { DType } from '../gpu/dtype.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { decodeSafetensors, encodeSafetensors, type SafeDType, type SafeTensor } from '../io/safetensors.ts';
import { parseModelConfig, type ModelConfig } from './config.ts';
import type { ValueSharding } from './sharded_values.ts';
import { Transformer } from './transformer.ts';

const VALUES = 'model.memory_values';
const SAFE: Record<DType, SafeDType> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

/** checkpoint files (in memory) that do not make a model: a missing file, a config of neither kind, a tensor missing, extra or of another shape (loadModel reports these as io/checkpoint.ts's CheckpointError) */
export class ModelFilesError extends EngramError {}

/** config.json: Hugging Face LlamaConfig fields, and engram's own config under "engram" */
export function hfConfig(c: ModelConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.dim,
    intermediate_size: c.ffnHidden,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.normEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tiedEmbeddings,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    torch_dtype: 'float32',
    engram: c,
  };
}

/** engram's config from config.json: its "engram" key, or a dense one from the HF fields */
export function configFromJson(json: unknown, source: string): ModelConfig {
  const o = json as Record<string, unknown>;
  if (o && typeof o === 'object' && o['engram']) return parseModelConfig(o['engram']);
  if (!o || o['model_type'] !== 'llama') throw new ModelFilesError(`${source}: config.json is neither an engram config nor a Hugging Face Llama config`);
  return parseModelConfig({
    vocabSize: o['vocab_size'],
    dim: o['hidden_size'],
    ffnHidden: o['intermediate_size'],
    layers: o['num_hidden_layers'],
    heads: o['num_attention_heads'],
    kvHeads: o['num_key_value_heads'] ?? o['num_attention_heads'],
    maxSeqLen: o['max_position_embeddings'],
    normEps: o['rms_norm_eps'] ?? 1e-6,
    ropeTheta: o['rope_theta'] ?? 10000,
    tiedEmbeddings: o['tie_word_embeddings'] ?? false,
  });
}

/** Writes the model (and `files`, e.g. tokenizer.json or optimizer state) to `dir`, atomically. */
export async function saveModel(gpu: Gpu, dir: string, model: Transformer, files: Record<string, Uint8Array | string> = {}): Promise<void> {
  const tensors: Record<string, SafeTensor> = {};
  for (const p of model.params) {
    if (p.group === 'values') continue;
    tensors[p.name] = { dtype: SAFE[p.value.dtype as DType], shape: [...p.value.shape], data: await gpu.readRaw(p.value) };
  }
  const table = model.table;
  if (table) {
    const parts = await Promise.all(table.params.map((p) => gpu.readRaw(p.value)));
    const data = new Uint8Array(parts.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const b of parts) {
      data.set(b, at);
      at += b.length;
    }
    tensors[VALUES] = { dtype: SAFE[table.dtype], shape: [table.rows, table.dim], data };
  }
  // a table sharded over several GPUs is saved whole, as one GPU's (loadModel's valueGpus shards it again)
  const sharded = model.shardedTable;
  if (sharded) tensors[VALUES] = { dtype: SAFE[sharded.dtype], shape: [sharded.rows, sharded.dim], data: await sharded.gather() };
  const { writeCheckpoint } = await import('../io/checkpoint.ts');
  await writeCheckpoint(dir, {
    'model.safetensors': encodeSafetensors(tensors, { format: 'pt' }),
    'config.json': JSON.stringify(hfConfig(model.config), null, 2) + '\n',
    ...files,
  });
}

/**
 * Reads a checkpoint folder into a new model; every tensor's presence, dtype and shape is checked.
 * valueGpus (and valueExchange): the value table sharded over these GPUs (Transformer.create's), whichever way it was saved
 */
export async function loadModel(gpu: Gpu, dir: string, o: ValueSharding = {}): Promise<{ model: Transformer; files: Record<string, Uint8Array> }> {
  const { CheckpointError, readCheckpoint } = await import('../io/checkpoint.ts');
  const files = await readCheckpoint(dir);
  try {
    return { model: await modelFromFiles(gpu, files, dir, o), files };
  } catch (e) {
    throw e instanceof ModelFilesError ? new CheckpointError(e.message, { cause: e }) : e;
  }
}

/**
 * A new model from checkpoint files already in memory (config.json and model.safetensors, e.g.
 * fetched by a browser); every tensor's presence, dtype and shape is checked. `source` names the
 * files in errors (ModelFilesError).
 */
export async function modelFromFiles(gpu: Gpu, files: Readonly<Record<string, Uint8Array>>, source = 'checkpoint', o: ValueSharding = {}): Promise<Transformer> {
  const cfgBytes = files['config.json'];
  const stBytes = files['model.safetensors'];
  if (!cfgBytes || !stBytes) throw new ModelFilesError(`${source}: a model checkpoint needs config.json and model.safetensors`);
  const config = configFromJson(JSON.parse(new TextDecoder().decode(cfgBytes)), source);
  const { tensors } = decodeSafetensors(stBytes, `${source}/model.safetensors`);
  const model = await Transformer.create(gpu, config, 0, o);
  try {
    const seen = new Set<string>();
    const put = (t: Tensor, bytes: Uint8Array) => gpu.writeBytes(t, bytes);
    const expect = (name: string, dtype: DType, shape: readonly number[]): SafeTensor => {
      const st = tensors[name];
      if (!st) throw new ModelFilesError(`${source}: model.safetensors has no tensor '${name}' (the config wants [${shape.join(', ')}] ${SAFE[dtype]})`);
      if (st.dtype !== SAFE[dtype] || st.shape.length !== shape.length || st.shape.some((d, i) => d !== shape[i])) {
        throw new ModelFilesError(`${source}: tensor '${name}' is [${st.shape.join(', ')}] ${st.dtype}; the config wants [${shape.join(', ')}] ${SAFE[dtype]}`);
      }
      seen.add(name);
      return st;
    };
    for (const p of model.params) {
      if (p.group === 'values') continue;
      put(p.value, expect(p.name, p.value.dtype as DType, p.value.shape).data);
    }
    const table = model.table;
    if (table) {
      const st = expect(VALUES, table.dtype, [table.rows, table.dim]);
      let at = 0;
      for (const p of table.params) {
        put(p.value, st.data.subarray(at, at + p.value.byteLength));
        at += p.value.byteLength;
      }
    }
    const sharded = model.shardedTable;
    if (sharded) sharded.scatter(expect(VALUES, sharded.dtype, [sharded.rows, sharded.dim]).data);
    const extra = Object.keys(tensors).filter((n) => !seen.has(n));
    if (extra.length) throw new ModelFilesError(`${source}: model.safetensors has tensors the config does not use: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', ...' : ''}`);
    await gpu.sync();
    for (const s of model.shardedTable?.shards ?? []) await s.gpu.sync();
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}
