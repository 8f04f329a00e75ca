// `engram memory build | add | remove | list | search` and `engram generate --memory`: Memory³
// explicit memories (spec shared/specs/memory3.md) from the command line.
//
// a bank (memory3/bank.ts) lives in a folder, by default `<model>.memory` beside the checkpoint
// (not inside it: writing a checkpoint replaces its whole folder; a bank is tied to the weights
// anyway, by their fingerprint). build and add open the model (its weights, tokenizer and
// fingerprint, memory3/write.ts modelFingerprint) and create the bank when there is none; its
// memory dims (layers, tokens per head, dtype) come from the flags, else from an existing bank, else
// from the defaults (first half of the blocks, 8 tokens, bf16). a bank built for another model is
// refused by MemoryBank.open with an error naming both fingerprints.
//
// remove, list and search need no model: they open the bank with the model its manifest names
// (MemoryBank.manifestAt).
//
// build checks every reference before writing any (too few tokens, empty text, bad JSON, ids twice
// or already in the bank: errors name the file and line), so a bad file adds nothing; then writes
// memories batch by batch, adds each batch with deferIndex and rebuilds the indexes once at the end.
//
// --dtype pq: product-quantised memories (memory3/quantize.ts). build learns the codebooks from the
// memories of up to PQ_SAMPLE of the file's references (evenly spread) before it creates the bank,
// with --vq-bytes code bytes per vector (default headDim / 8); later adds code their memories with
// the bank's codebooks. a pq bank is made by build only (its codebooks need references to learn from).

import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { Tokenizer } from '../data/tokenizer.ts';
import { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { loadModel } from '../model/checkpoint.ts';
import type { Transformer } from '../model/transformer.ts';
import { MemoryBank, type BankManifest, type BankModel, type SearchHit } from '../memory3/bank.ts';
import type { MemoryCodebooks, MemoryDType } from '../memory3/blob.ts';
import { trainMemoryCodebooks } from '../memory3/quantize.ts';
import { exportBank } from '../memory3/export.ts';
import { MemoryReader, type ChunkInfo } from '../memory3/read.ts';
import { defaultMemoryLayers, modelFingerprint, referenceTokens, writeMemories } from '../memory3/write.ts';
import { checkNewIds, checkReferences, maxReferenceTokens, oneLine, writeAndAdd, type ReferenceLine } from '../memory3/add.ts';
import { streamText } from './commands.ts';

export { oneLine, type ReferenceLine };

const EOT = '<|endoftext|>';

/** what a command writes to and computes with; tests pass their own */
export interface MemoryEnv {
  /** the GPU to use (default: a new one, destroyed at the end) */
  gpu?: Gpu;
  /** stdout, raw (default process.stdout.write) */
  write?: (s: string) => void;
  /** a line to stderr: progress and reports (default console.error) */
  log?: (line: string) => void;
}

/** the memory dims a new bank gets (absent: an existing bank's, else the defaults) */
export interface MemoryDims {
  layers?: number[];
  tokens?: number;
  dtype?: MemoryDType;
  /** dtype pq: code bytes per vector (a divisor of the head dim; default headDim / 8) */
  vqBytes?: number;
}

/** references a pq bank's codebooks are learned from, at most */
const PQ_SAMPLE = 4096;

const io = (env: MemoryEnv) => ({
  write: env.write ?? ((s: string) => void process.stdout.write(s)),
  log: env.log ?? ((line: string) => console.error(line)),
});

/** the bank folder: --bank, else <model>.memory */
export function bankPath(a: { bank?: string | undefined; model?: string | undefined }, cmd: string): string {
  if (a.bank) return a.bank;
  if (a.model) return `${a.model.replace(/\/+$/, '')}.memory`;
  throw new EngramError(`engram ${cmd}: give the bank with --bank <folder> (or --model <checkpoint>, whose bank is <checkpoint>.memory)`);
}

/** "0,1,2" as layer indices */
export function parseLayers(s: string): number[] {
  const layers = s.split(',').map((x) => x.trim());
  if (layers.some((x) => !/^\d+$/.test(x))) throw new EngramError(`--layers: expected block indices like 0,1,2, got '${s}'`);
  return layers.map(Number);
}

/** 'bf16' | 'f32' | 'pq' */
export function parseDtype(s: string): MemoryDType {
  if (s !== 'bf16' && s !== 'f32' && s !== 'pq') throw new EngramError(`--dtype: expected bf16, f32 or pq, got '${s}'`);
  return s;
}

/** the manifest of the bank at `uri`, or null when there is none (MemoryBank.manifestAt) */
export const readBankManifest = (uri: string): Promise<BankManifest | null> => MemoryBank.manifestAt(uri);

const noBank = (uri: string) => new EngramError(`no memory bank at ${uri}: build one with \`engram memory build --model <checkpoint> --bank ${uri} --from <references.txt>\``);

/** the existing bank at `uri`, opened for the model its manifest names (no model needed) */
export async function openExistingBank(uri: string): Promise<MemoryBank> {
  const m = await readBankManifest(uri);
  if (!m) throw noBank(uri);
  return MemoryBank.open(uri, { model: MemoryBank.modelOf(m) });
}

/** a checkpoint opened for memory work: model, tokenizer and the fingerprint a bank checks */
interface MemoryModel {
  gpu: Gpu;
  model: Transformer;
  tok: Tokenizer;
  fingerprint: string;
  dispose(): void;
}

async function openMemoryModel(dir: string, env: MemoryEnv): Promise<MemoryModel> {
  const gpu = env.gpu ?? (await Gpu.create());
  const own = env.gpu === undefined;
  try {
    const { model, files } = await loadModel(gpu, dir);
    try {
      const tj = files['tokenizer.json'];
      if (!tj) throw new EngramError(`${dir} has no tokenizer.json: a memory bank needs the model's tokenizer`);
      const tok = await Tokenizer.fromJson(new TextDecoder().decode(tj));
      const fingerprint = modelFingerprint(files);
      return {
        gpu,
        model,
        tok,
        fingerprint,
        dispose: () => {
          model.dispose();
          if (own) gpu.destroy();
        },
      };
    } catch (e) {
      model.dispose();
      throw e;
    }
  } catch (e) {
    if (own) gpu.destroy();
    throw e;
  }
}

/**
 * what a bank for this model holds: its memory dims from `dims`, else the existing bank's, else the
 * defaults; the fingerprint is this model's (MemoryBank.open refuses a bank of another model)
 */
async function bankModelFor(uri: string, mm: MemoryModel, dims: MemoryDims, create: boolean): Promise<BankModel> {
  const existing = await readBankManifest(uri);
  if (!existing && !create) throw noBank(uri);
  const c = mm.model.config;
  const model: BankModel = {
    fingerprint: mm.fingerprint,
    layers: dims.layers ?? existing?.layers ?? defaultMemoryLayers(c),
    kvHeads: c.kvHeads,
    tokens: dims.tokens ?? existing?.tokens ?? 8,
    headDim: c.dim / c.heads,
    dtype: dims.dtype ?? existing?.dtype ?? 'bf16',
    ...(existing?.vectorDim ? { vectorDim: existing.vectorDim } : {}),
  };
  const bad = model.layers.filter((l) => !(Number.isInteger(l) && l >= 0 && l < c.layers));
  if (bad.length || new Set(model.layers).size !== model.layers.length) {
    throw new EngramError(`--layers [${model.layers.join(', ')}]: memory layers must be distinct blocks in 0..${c.layers - 1}`);
  }
  if (!(Number.isInteger(model.tokens) && model.tokens >= 1)) throw new EngramError(`--tokens: expected a positive integer, got ${model.tokens}`);
  return model;
}

/** references from a file: one per non-empty line (.txt), or a JSON object {text, id?} per line (.jsonl) */
export function readReferences(path: string): ReferenceLine[] {
  const jsonl = ['.jsonl', '.ndjson'].includes(extname(path).toLowerCase());
  let body: string;
  try {
    body = readFileSync(path, 'utf8');
  } catch (e) {
    throw new EngramError(`cannot read the references in ${path}: ${(e as Error).message}`, { cause: e });
  }
  const lines = body.split(/\r?\n/);
  const out: ReferenceLine[] = [];
  lines.forEach((line, i) => {
    const where = `${path}:${i + 1}`;
    if (line.trim() === '') return;
    if (!jsonl) return void out.push({ text: line.trim(), where });
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new EngramError(`${where}: not valid JSON (${(e as Error).message}); a .jsonl file holds one {"text": ..., "id": ...} object per line`);
    }
    if (!o || typeof o !== 'object' || Array.isArray(o)) throw new EngramError(`${where}: expected a JSON object {"text": ..., "id": ...}`);
    const { text, id } = o as { text?: unknown; id?: unknown };
    if (typeof text !== 'string' || text.trim() === '') throw new EngramError(`${where}: "text" must be a non-empty string`);
    if (id !== undefined && (typeof id !== 'string' || id === '')) throw new EngramError(`${where}: "id" must be a non-empty string when given, got ${JSON.stringify(id)}`);
    out.push({ text: text.trim(), where, ...(id !== undefined ? { id } : {}) });
  });
  return out;
}

export interface BuildArgs extends MemoryDims {
  model: string;
  bank?: string;
  /** a .txt (a reference per non-empty line) or .jsonl ({"text", "id"?} per line) file */
  from: string;
  /** references written at once (default 32) */
  batch?: number;
}

/** `engram memory build`: a bank from a file of references; their ids, how many the bank holds, the time */
export async function memoryBuildCommand(a: BuildArgs, env: MemoryEnv = {}): Promise<{ ids: string[]; count: number; seconds: number }> {
  const { write, log } = io(env);
  const uri = bankPath(a, 'memory build');
  const batch = a.batch ?? 32;
  if (!(Number.isInteger(batch) && batch >= 1)) throw new EngramError(`--batch: expected a positive integer, got ${batch}`);
  const refs = readReferences(a.from);
  if (refs.length === 0) throw new EngramError(`${a.from} holds no references (a .txt file: one per non-empty line; .jsonl: one {"text": ...} object per line)`);
  const mm = await openMemoryModel(a.model, env);
  try {
    // every reference checked before the bank is created or touched: a bad file adds nothing
    const model = await bankModelFor(uri, mm, a, true);
    const lineOf = checkReferences(mm, refs, model.tokens);
    const codebooks = model.dtype === 'pq' && !(await readBankManifest(uri)) ? await learnCodebooks(mm, refs, model, a.vqBytes, log) : undefined;
    const bank = await MemoryBank.open(uri, { model, create: true, ...(codebooks ? { codebooks } : {}) });
    try {
      await checkNewIds(lineOf, bank);
      const t0 = performance.now();
      const rate = (n: number) => n / Math.max(1e-9, (performance.now() - t0) / 1000);
      const ids = await writeAndAdd(mm, bank, refs, {
        batch,
        deferIndex: true,
        onBatch: (done) => log(`memory build: ${done}/${refs.length} references written (${rate(done).toFixed(1)} refs/s)`),
      });
      await bank.reindex();
      const seconds = (performance.now() - t0) / 1000;
      const count = await bank.count();
      write(`added ${ids.length} references to ${uri} in ${seconds.toFixed(1)}s (${rate(ids.length).toFixed(1)} refs/s); the bank holds ${count}\n`);
      return { ids, count, seconds };
    } finally {
      bank.close();
    }
  } finally {
    mm.dispose();
  }
}

/** a new pq bank's codebooks: learned from the memories of up to PQ_SAMPLE references, evenly spread */
async function learnCodebooks(mm: MemoryModel, refs: readonly ReferenceLine[], m: BankModel, vqBytes: number | undefined, log: (line: string) => void): Promise<MemoryCodebooks> {
  if (vqBytes !== undefined && !(Number.isInteger(vqBytes) && vqBytes >= 1 && m.headDim % vqBytes === 0)) {
    throw new EngramError(`--vq-bytes: expected a divisor of the head dim ${m.headDim}, got ${vqBytes}`);
  }
  const step = Math.max(1, Math.floor(refs.length / PQ_SAMPLE));
  const sample = refs.filter((_, i) => i % step === 0).slice(0, PQ_SAMPLE);
  const prefix = referenceTokens(mm.tok, 'x').prefix.length;
  const mems = [];
  for (let s = 0; s < sample.length; s += 64) {
    const w = await writeMemories(mm.gpu, mm.model, mm.tok, sample.slice(s, s + 64).map((r) => r.text), { layers: m.layers, tokens: m.tokens, dtype: 'f32', maxTokens: maxReferenceTokens(mm.model.config, prefix) });
    mems.push(...w.map((x) => x.memory));
  }
  log(`memory build: learning pq codebooks from ${mems.length} references' memories`);
  return trainMemoryCodebooks(mm.gpu, mems, vqBytes !== undefined ? { subvectors: vqBytes } : {});
}

/** `engram memory add`: one reference written and added (the bank made if missing); its id */
export async function memoryAddCommand(a: MemoryDims & { model: string; bank?: string; text: string; id?: string }, env: MemoryEnv = {}): Promise<string> {
  const { write } = io(env);
  const uri = bankPath(a, 'memory add');
  if (typeof a.text !== 'string' || a.text.trim() === '') throw new EngramError('engram memory add: --text "<reference>" is required');
  const mm = await openMemoryModel(a.model, env);
  try {
    const refs: ReferenceLine[] = [{ text: a.text.trim(), where: '--text', ...(a.id !== undefined ? { id: a.id } : {}) }];
    const model = await bankModelFor(uri, mm, a, true);
    if (model.dtype === 'pq' && !(await readBankManifest(uri))) {
      throw new EngramError(`engram memory add: a pq bank is made by \`engram memory build --dtype pq\` (its codebooks are learned from the references); there is no bank at ${uri}`);
    }
    const lineOf = checkReferences(mm, refs, model.tokens);
    const bank = await MemoryBank.open(uri, { model, create: true });
    try {
      await checkNewIds(lineOf, bank);
      // the bank's own index policy (reindexAfter) for a single add
      const [id] = await writeAndAdd(mm, bank, refs, { batch: 1, deferIndex: false });
      write(`${id}\n`);
      return id!;
    } finally {
      bank.close();
    }
  } finally {
    mm.dispose();
  }
}

/** `engram memory remove`: the references with these ids; all must be in the bank (else nothing is removed) */
export async function memoryRemoveCommand(a: { bank?: string; model?: string; ids: readonly string[] }, env: MemoryEnv = {}): Promise<number> {
  const { write } = io(env);
  const uri = bankPath(a, 'memory remove');
  const ids = [...new Set(a.ids)];
  if (ids.length === 0) throw new EngramError('engram memory remove: --id <id>[,<id>...] is required');
  const bank = await openExistingBank(uri);
  try {
    const have = new Set<string>();
    for (let s = 0; s < ids.length; s += 512) for (const r of await bank.get(ids.slice(s, s + 512))) have.add(r.id);
    const unknown = ids.filter((id) => !have.has(id));
    if (unknown.length) {
      throw new EngramError(`engram memory remove: the bank at ${uri} has no reference ${unknown.map((id) => `'${id}'`).join(', ')}; nothing was removed`);
    }
    const n = await bank.remove(ids);
    write(`removed ${n} reference${n === 1 ? '' : 's'}; the bank holds ${await bank.count()}\n`);
    return n;
  } finally {
    bank.close();
  }
}

/** `engram memory list`: references in insertion order, a page of them */
export async function memoryListCommand(a: { bank?: string; model?: string; offset?: number; limit?: number }, env: MemoryEnv = {}): Promise<{ id: string; text: string }[]> {
  const { write, log } = io(env);
  const bank = await openExistingBank(bankPath(a, 'memory list'));
  try {
    const offset = a.offset ?? 0;
    const rows = await bank.list({ offset, limit: a.limit ?? 20 });
    for (const r of rows) write(`${r.id}\t${oneLine(r.text)}\n`);
    log(`${rows.length ? `${offset + 1}-${offset + rows.length}` : 'none'} of ${await bank.count()} references`);
    return rows;
  } finally {
    bank.close();
  }
}

/** `engram memory search`: the k references BM25 ranks first for the query */
export async function memorySearchCommand(a: { bank?: string; model?: string; query: string; k?: number }, env: MemoryEnv = {}): Promise<SearchHit[]> {
  const { write } = io(env);
  if (typeof a.query !== 'string' || a.query.trim() === '') throw new EngramError('engram memory search: --query "<text>" is required');
  const bank = await openExistingBank(bankPath(a, 'memory search'));
  try {
    const hits = await bank.search(a.query, { k: a.k ?? 5 });
    for (const h of hits) write(`${h.id}\t${h.score.toFixed(3)}\t${oneLine(h.text)}\n`);
    return hits;
  } finally {
    bank.close();
  }
}

/** `engram memory export`: the bank (its first `limit` references) as one file for the browser (memory3/export.ts); its bytes */
export async function memoryExportCommand(a: { bank?: string; model?: string; out: string; limit?: number }, env: MemoryEnv = {}): Promise<number> {
  const { log } = io(env);
  const uri = bankPath(a, 'memory export');
  const bank = await openExistingBank(uri);
  try {
    const bytes = await exportBank(bank, a.limit === undefined ? {} : { limit: a.limit });
    await writeFile(a.out, bytes);
    log(`${a.out}: ${(bytes.length / 1024).toFixed(1)} KiB, ${Math.min(await bank.count(), a.limit ?? Infinity)} references of ${uri}`);
    return bytes.length;
  } finally {
    bank.close();
  }
}

export interface GenerateWithMemoryArgs {
  model: string;
  /** the bank to read from */
  memory: string;
  prompt: string;
  maxNew: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string;
}

/**
 * `engram generate --memory <bank>`: the prompt's continuation through the Memory³ reader, streamed to
 * stdout (up to a stop string), then what each chunk retrieved, to stderr
 */
export async function generateWithMemoryCommand(a: GenerateWithMemoryArgs, env: MemoryEnv = {}): Promise<{ text: string; chunks: ChunkInfo[] }> {
  const { write, log } = io(env);
  if (a.prompt === '') throw new EngramError('engram generate --memory: give a --prompt (its text retrieves the first memories)');
  const mm = await openMemoryModel(a.model, env);
  try {
    const bank = await MemoryBank.open(a.memory, { model: await bankModelFor(a.memory, mm, {}, false) });
    try {
      const { tok } = mm;
      const reader = new MemoryReader(mm.gpu, mm.model, tok, bank, { inspect: true });
      const eot = tok.tokenId(EOT);
      write(a.prompt);
      const stream = streamText(tok, a.stop, write);
      const out = await reader.generate(Array.from(tok.encode(a.prompt)), {
        maxNew: a.maxNew,
        temperature: a.temperature,
        topP: a.topP,
        topK: a.topK,
        seed: a.seed,
        ...(eot !== undefined ? { stopIds: [eot] } : {}),
        ...stream.hooks,
      });
      write('\n');
      for (const c of out.chunks) {
        log(`memory: tokens ${c.start}-${c.end}: ${c.retrieved.length} reference${c.retrieved.length === 1 ? '' : 's'} for "${oneLine(c.query, 60)}"`);
        for (const [i, h] of c.retrieved.entries()) log(`  ${h.id} (${(100 * (c.attention?.[i] ?? 0)).toFixed(1)}% of the attention): ${oneLine(h.text)}`);
      }
      return { text: stream.text(), chunks: out.chunks };
    } finally {
      bank.close();
    }
  } finally {
    mm.dispose();
  }
}
