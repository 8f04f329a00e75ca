// the demo's module worker: loads a checkpoint (config.json, model.safetensors), its tokenizer.json
// and a bank export (memory3/export.ts) from URLs, runs the model on the browser's WebGPU
// (Gpu.create finds navigator.gpu), and generates: with memory, MemoryReader over the StaticBank
// (each 64-token chunk retrieves with its own text); without, a plain KV-cached decode. it posts
// what each chunk retrieved, and each token with the Memory+ slots that fired at the position that
// produced it (the strongest picks of every head, from logits' watchMemory).
//
// the plain decode is infer/generate.ts generateBatch's loop (Lockstep, lastLogits) for one row,
// written out here because generate() takes no watchMemory.

import { Tokenizer } from '../../src/data/tokenizer.ts';
import { Gpu } from '../../src/gpu/device.ts';
import { lastLogits, Lockstep, type SampleOptions } from '../../src/infer/generate.ts';
import { StaticBank, modelFingerprintAsync } from '../../src/memory3/export.ts';
import { MemoryReader, type ChunkInfo } from '../../src/memory3/read.ts';
import { modelFromFiles } from '../../src/model/checkpoint.ts';
import type { MemoryReads, Transformer } from '../../src/model/transformer.ts';
import type { FromWorker, SlotRead, ToWorker } from './messages.ts';

/** picks shown per head */
const SHOWN_PICKS = 4;

interface Loaded {
  gpu: Gpu;
  model: Transformer;
  tok: Tokenizer;
  bank: StaticBank;
  eot: number | undefined;
}

// the worker's global scope, typed by what we use of it (the project's lib is the DOM's)
const scope = self as unknown as { onmessage: ((e: MessageEvent<ToWorker>) => void) | null; postMessage(m: FromWorker): void };
const post = (m: FromWorker): void => scope.postMessage(m);

let loaded: Promise<Loaded> | null = null;
let busy = false;

scope.onmessage = (e) => {
  const m = e.data;
  const run = async (): Promise<void> => {
    if (m.type === 'load') {
      loaded ??= load(m.model, m.tokenizer, m.bank);
      await loaded;
    } else {
      if (!loaded) throw new Error('generate before load: the page must send load first');
      if (busy) throw new Error('already generating: wait for it to finish');
      busy = true;
      try {
        await generateText(await loaded, m);
      } finally {
        busy = false;
      }
    }
  };
  run().catch((err: unknown) => post({ type: 'error', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) }));
};

async function fetchBytes(url: string): Promise<Uint8Array> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`fetching ${url}: HTTP ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function load(modelUrl: string, tokenizerUrl: string, bankUrl: string): Promise<Loaded> {
  post({ type: 'status', text: 'starting WebGPU…' });
  const gpu = await Gpu.create();
  post({ type: 'status', text: `WebGPU: ${gpu.adapterName}; fetching the model, tokenizer and bank…` });
  const [config, weights, tokJson, bankBytes] = await Promise.all([
    fetchBytes(new URL('config.json', modelUrl).href),
    fetchBytes(new URL('model.safetensors', modelUrl).href),
    fetchBytes(tokenizerUrl),
    fetchBytes(bankUrl),
  ]);
  const files = { 'config.json': config, 'model.safetensors': weights, 'tokenizer.json': tokJson };
  const bank = StaticBank.load(bankBytes, bankUrl);
  // a bank written by another model (or with another tokenizer) holds keys and values that mean nothing here
  bank.checkModel(await modelFingerprintAsync(files));
  post({ type: 'status', text: `WebGPU: ${gpu.adapterName}; building the model…` });
  const tok = await Tokenizer.fromJson(new TextDecoder().decode(tokJson));
  const model = await modelFromFiles(gpu, files, modelUrl);
  const c = model.config;
  post({
    type: 'ready',
    adapter: gpu.adapterName,
    cpu: gpu.cpu,
    model: `dim ${c.dim}, ${c.layers} blocks, vocab ${c.vocabSize}`,
    memoryLayers: c.memory?.layers ?? [],
    bank: { references: bank.size, dtype: bank.manifest.dtype, layers: bank.manifest.layers },
  });
  return { gpu, model, tok, bank, eot: tok.tokenId('<|endoftext|>') };
}

async function generateText(s: Loaded, m: Extract<ToWorker, { type: 'generate' }>): Promise<void> {
  const { gpu, model, tok, bank } = s;
  const prompt = Array.from(tok.encode(m.prompt));
  if (prompt.length === 0) throw new Error('the prompt is empty: type something to continue');
  const room = model.config.maxSeqLen - prompt.length;
  if (room < 1) throw new Error(`the prompt is ${prompt.length} tokens; this model reads at most ${model.config.maxSeqLen}`);
  post({ type: 'start', promptTokens: prompt.length });
  const t0 = performance.now();
  // the reads of the step being run: each Memory+ block's picks at the step's last position
  let pending: SlotRead[] = [];
  const watchMemory = async (layer: number, r: MemoryReads): Promise<void> => {
    const slots = (await gpu.read(r.slots)) as Uint32Array;
    const weights = (await gpu.read(r.weights)) as Float32Array;
    const { heads: H, topk: K } = model.config.memory!;
    const N = slots.length / (H * K); // (B T, heads, topk): the step's positions
    const heads = Array.from({ length: H }, (_, h) => {
      const at = ((N - 1) * H + h) * K;
      const order = Array.from({ length: K }, (_, j) => j).sort((a, b) => weights[at + b]! - weights[at + a]!).slice(0, SHOWN_PICKS);
      return { slots: order.map((j) => slots[at + j]!), weights: order.map((j) => weights[at + j]!) };
    });
    pending.push({ layer, heads });
  };
  const out: number[] = [];
  const onToken = (id: number): void => {
    out.push(id);
    post({ type: 'token', index: out.length - 1, id, piece: tok.decode([id]), text: tok.decode(out), slots: pending });
    pending = [];
  };
  const o = { maxNew: Math.min(m.maxNew, room), temperature: m.temperature, seed: m.seed, ...(s.eot !== undefined ? { stopIds: [s.eot] } : {}) };
  if (m.memory) {
    const reader = new MemoryReader(gpu, model, tok, bank);
    await reader.generate(prompt, { ...o, onToken, watchMemory, onChunk: (c: ChunkInfo) => post({ type: 'chunk', chunk: { start: c.start, end: c.end, query: c.query, retrieved: c.retrieved.map((h) => ({ id: h.id, text: h.text, score: h.score })) } }) });
  } else {
    await plainGenerate(gpu, model, prompt, { ...o, onToken }, watchMemory);
  }
  post({ type: 'done', tokens: out.length, seconds: (performance.now() - t0) / 1000 });
}

/** one row of generateBatch's loop (infer/generate.ts) with watchMemory passed to every step */
async function plainGenerate(
  gpu: Gpu,
  model: Transformer,
  prompt: readonly number[],
  o: SampleOptions & { maxNew: number; stopIds?: number[]; onToken: (id: number) => void },
  watchMemory: (layer: number, r: MemoryReads) => Promise<void>,
): Promise<void> {
  const { onToken, ...rest } = o;
  const max = Math.min(model.config.maxSeqLen, prompt.length + o.maxNew);
  const cache = await model.createCache(max);
  const rows = new Lockstep([prompt], { ...rest, onToken: (_: number, id: number) => onToken(id) });
  try {
    let next: readonly (readonly number[])[] = [prompt];
    while (!rows.done && cache.length + next[0]!.length <= max) next = rows.next(await lastLogits(gpu, model, next, { cache, watchMemory })).map((id) => [id]);
  } finally {
    for (const t of [...cache.k, ...cache.v]) t.dispose();
  }
}
