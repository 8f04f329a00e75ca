// bank exports (export.ts): a bank of memories written by a tiny random model, exported and loaded
// as a StaticBank: its manifest, order, BM25 search (each reference found by its own rare words),
// get() giving the bank's bytes back; MemoryReader reading it as it reads the bank; the limit;
// a pq bank with its codebooks; the browser's fingerprint equal to write.ts's; and damaged exports
// (a flipped byte, a damaged memory under a recomputed file checksum, truncation, magic, version,
// a bad index) refused with errors that say what is wrong.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { crc32 } from '../io/crc32.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { MemoryBank, type BankModel } from './bank.ts';
import { decodeMemory, encodeMemory } from './blob.ts';
import { DEFAULT_EXPORT_LIMIT, exportBank, MemoryExportError, modelFingerprintAsync, StaticBank, words, type ExportableBank } from './export.ts';
import { quantizeMemories, trainMemoryCodebooks } from './quantize.ts';
import { MemoryReader } from './read.ts';
import { defaultMemoryLayers, modelFingerprint, writeMemories, type WrittenMemory } from './write.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-export-'));
after(() => rm(root, { recursive: true, force: true }));

// every fact has a name of its own (a word found in no other fact)
const NAMES = ['Zorblat', 'Quenmoor', 'Vextaria', 'Plimquat', 'Dravith', 'Kelblax', 'Murtaria', 'Tashmoor', 'Ulobrin', 'Brinquat'];
const KINDS = ['river', 'mountain', 'festival', 'machine', 'language'];
const FACTS = NAMES.map((n, i) => `The ${KINDS[i % 5]} ${n} was first recorded in the year ${1200 + 7 * i} by the monks of the valley.`);

interface Setup {
  tok: Tokenizer;
  model: Transformer;
  written: WrittenMemory[];
  bank: MemoryBank;
  fingerprint: string;
}

let shared: Promise<Setup> | null = null;
/** the tokenizer, the model, its memories of FACTS and a bf16 bank of them (made once) */
function setup(): Promise<Setup> {
  shared ??= (async () => {
    const gpu = await testGpu();
    const file = join(root, 'train.txt');
    await writeFile(file, `${FACTS.join('\n')}\nReference: Q: When was the river recorded? A: in the year 1200.\n`);
    const json = await trainTokenizer([file], { vocabSize: 300, special: ['<|endoftext|>'] });
    const tok = await Tokenizer.fromJson(json);
    const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 96, tiedEmbeddings: true });
    const model = await Transformer.create(gpu, config, 3);
    const written = await writeMemories(gpu, model, tok, FACTS);
    const enc = new TextEncoder();
    const fingerprint = modelFingerprint({ 'config.json': enc.encode(JSON.stringify(config)), 'model.safetensors': enc.encode('weights'), 'tokenizer.json': enc.encode(json) });
    const bankModel: BankModel = { fingerprint, layers: defaultMemoryLayers(config), kvHeads: 2, tokens: 8, headDim: 8, dtype: 'bf16' };
    const bank = await MemoryBank.open(join(root, 'bank'), { create: true, model: bankModel });
    await bank.add(written.map((w, i) => ({ id: `fact-${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
    return { tok, model, written, bank, fingerprint };
  })();
  return shared;
}
after(async () => {
  const s = await shared?.catch(() => null);
  s?.bank.close();
  s?.model.dispose();
});

/** asserts that fn throws a MemoryExportError whose message matches */
function throwsExport(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof MemoryExportError, `expected a MemoryExportError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

/** the export with its file checksum recomputed (to reach the checks behind it) */
function resealed(bytes: Uint8Array): Uint8Array {
  const b = bytes.slice();
  new DataView(b.buffer).setUint32(12, crc32(b.subarray(16)), true);
  return b;
}

test('words: lower-cased, split on anything not a letter or a digit, no stop words', () => {
  assert.deepEqual(words("The Zorblat-river's year: 1207, café!"), ['zorblat', 'river', 's', 'year', '1207', 'café']);
  assert.deepEqual(words(' ... '), []);
});

test('an export loads as a StaticBank: manifest, order, search by rare words, the same bytes back', async () => {
  const { bank, fingerprint } = await setup();
  const bytes = await exportBank(bank);
  const s = StaticBank.load(bytes);
  assert.equal(s.size, FACTS.length);
  assert.deepEqual(s.manifest, bank.manifest);
  assert.equal(s.codebooks, null);
  assert.deepEqual(s.list(), await bank.list());
  for (const [i, name] of NAMES.entries()) {
    const hits = await s.search(`what do we know about ${name.toLowerCase()} and its ${KINDS[i % 5]}?`, { k: 3 });
    assert.equal(hits[0]?.id, `fact-${i}`, `${name}: ${JSON.stringify(hits)}`);
    assert.equal(hits[0]!.text, FACTS[i]);
    assert.ok(hits.every((h, j) => j === 0 || h.score <= hits[j - 1]!.score));
    // the bank on disk finds the same reference first
    assert.equal((await bank.search(name, { k: 1 }))[0]?.id, `fact-${i}`);
  }
  assert.deepEqual(await s.search('nothing matches this', { k: 5 }), []);
  await assert.rejects(s.search('river', { k: 0 }), /k must be a positive integer/);
  const ids = ['fact-3', 'nope', 'fact-0'];
  const mine = await s.get(ids);
  assert.deepEqual(mine, await bank.get(ids));
  assert.deepEqual(mine.map((r) => r.id), ['fact-3', 'fact-0']);
  // get() hands out copies: changing one leaves the bank as it was
  mine[0]!.memory[30]! ^= 0xff;
  assert.deepEqual((await s.get(['fact-3']))[0]!.memory, (await bank.get(['fact-3']))[0]!.memory);
  s.checkModel(fingerprint);
  throwsExport(() => s.checkModel('another'), /built for model [0-9a-f]+, not for this model \(another\)/);
  // a copy at an odd offset (as a fetch into a larger buffer may give) loads the same
  const odd = new Uint8Array(bytes.length + 1);
  odd.set(bytes, 1);
  assert.deepEqual(await StaticBank.load(odd.subarray(1)).get(['fact-9']), await bank.get(['fact-9']));
});

test('MemoryReader reads a StaticBank as it reads the bank it was exported from', async () => {
  const gpu = await testGpu();
  const { tok, model, bank } = await setup();
  const s = StaticBank.load(await exportBank(bank));
  const prompt = Array.from(tok.encode(' The monks recorded the machine Dravith and the river Zorblat in the year'));
  const o = { maxNew: 6, temperature: 0 } as const;
  const fromBank = await new MemoryReader(gpu, model, tok, bank, { topk: 2, chunk: 8 }).generate(prompt, o);
  const fromStatic = await new MemoryReader(gpu, model, tok, s, { topk: 2, chunk: 8 }).generate(prompt, o);
  const retrieved = (r: typeof fromBank) => r.chunks.map((c) => c.retrieved.map((h) => h.id));
  // the two BM25s (LanceDB's, and words over TokenBm25) agree here, chunk by chunk: so do the continuations
  assert.deepEqual(retrieved(fromStatic), retrieved(fromBank));
  assert.ok(retrieved(fromStatic).flat().length > 0);
  assert.deepEqual(fromStatic.ids, fromBank.ids);
  assert.equal(fromStatic.ids.length, 6);
});

test('limit: the first references; a bank over the default limit is refused without one', async () => {
  const { bank } = await setup();
  const s = StaticBank.load(await exportBank(bank, { limit: 3 }));
  assert.deepEqual(s.list().map((r) => r.id), ['fact-0', 'fact-1', 'fact-2']);
  assert.equal(StaticBank.load(await exportBank(bank, { limit: 0 })).size, 0);
  await assert.rejects(exportBank(bank, { limit: -1 }), /limit must be a non-negative integer/);
  const huge: ExportableBank = { manifest: bank.manifest, codebooks: null, count: () => Promise.resolve(DEFAULT_EXPORT_LIMIT + 1), list: () => Promise.resolve([]), get: () => Promise.resolve([]) };
  await assert.rejects(exportBank(huge), /holds 10001 references, more than the 10000 exported by default .*pass limit/);
});

test('a pq bank exports with its codebooks and decodes through them', async () => {
  const gpu = await testGpu();
  const { written, bank } = await setup();
  const mems = written.map((w) => w.memory);
  const books = await trainMemoryCodebooks(gpu, mems, { subvectors: 2, centroids: 8, iters: 3 });
  const q = await quantizeMemories(gpu, books, mems);
  const pq = await MemoryBank.open(join(root, 'pq'), { create: true, codebooks: books, model: { ...MemoryBank.modelOf(bank.manifest), dtype: 'pq' } });
  try {
    await pq.add(q.map((m, i) => ({ id: `fact-${i}`, text: FACTS[i]!, tokens: written[i]!.tokens, memory: encodeMemory(m) })));
    const s = StaticBank.load(await exportBank(pq));
    assert.equal(s.manifest.dtype, 'pq');
    assert.deepEqual(s.codebooks, pq.codebooks);
    const [r] = await s.get(['fact-7']);
    assert.deepEqual(decodeMemory(r!.memory, 'fact-7', s.codebooks!).k, q[7]!.k);
  } finally {
    pq.close();
  }
});

test('the browser fingerprint (WebCrypto) equals write.ts modelFingerprint', async () => {
  const enc = new TextEncoder();
  const files = { 'config.json': enc.encode('{"a":1}'), 'model.safetensors': new Uint8Array([1, 2, 3, 250]), 'tokenizer.json': enc.encode('{}') };
  assert.equal(await modelFingerprintAsync(files), modelFingerprint(files));
  await assert.rejects(modelFingerprintAsync({ 'config.json': files['config.json'] }), /the checkpoint has no model.safetensors/);
});

test('a damaged export is refused, naming what is wrong', async () => {
  const { bank } = await setup();
  const bytes = await exportBank(bank);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const J = view.getUint32(8, true);
  // a flipped byte in a memory, in the index, a truncated file
  for (const at of [bytes.length - 5, 16 + 40]) {
    const b = bytes.slice();
    b[at]! ^= 0x10;
    throwsExport(() => StaticBank.load(b, 'facts.engram'), /^facts.engram: checksum mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\): the file is corrupt or truncated; export the bank again$/);
  }
  throwsExport(() => StaticBank.load(bytes.subarray(0, bytes.length - 100)), /checksum mismatch/);
  throwsExport(() => StaticBank.load(bytes.subarray(0, 10)), /10 bytes is too short for an export's 16-byte header/);
  throwsExport(() => StaticBank.load(bytes.subarray(0, 16 + 20)), /the header says the index takes \d+ bytes, but the file ends 20 bytes after the header: truncated/);
  const magic = bytes.slice();
  magic[0] = 0x58;
  throwsExport(() => StaticBank.load(magic), /not a bank export: magic "XMBX", expected 'EMBX'/);
  const version = bytes.slice();
  new DataView(version.buffer).setUint16(4, 9, true);
  throwsExport(() => StaticBank.load(version), /format version 9 is not supported/);
  // behind a valid file checksum: a damaged memory is named by its reference, by the blob's own checksum
  const index = JSON.parse(new TextDecoder().decode(bytes.subarray(16, 16 + J))) as { refs: { id: string; offset: number; length: number }[] };
  const ref2 = index.refs.find((x) => x.id === 'fact-2')!;
  const blob = bytes.slice();
  blob[ref2.offset + 40]! ^= 0x01;
  throwsExport(() => StaticBank.load(resealed(blob)), /memory of reference 2 \('fact-2'\): checksum mismatch .* the blob is corrupt/);
  // an index that does not parse, or points outside the file
  const garbled = bytes.slice();
  garbled[16] = 0x7b + 1; // '{' -> '|'
  throwsExport(() => StaticBank.load(resealed(garbled)), /its index is not valid UTF-8 JSON/);
  const edit = (f: (x: { manifest: Record<string, unknown>; refs: Record<string, unknown>[] }) => void): Uint8Array => {
    const x = JSON.parse(new TextDecoder().decode(bytes.subarray(16, 16 + J))) as Parameters<typeof f>[0];
    f(x);
    const json = new TextEncoder().encode(JSON.stringify(x));
    assert.ok(json.length <= J, 'the edited index fits where the old one was');
    const b = bytes.slice();
    b.fill(0x20, 16, 16 + J);
    b.set(json, 16);
    return resealed(b);
  };
  throwsExport(() => StaticBank.load(edit((x) => (x.refs[1]!['offset'] = 3))), /reference 1 \('fact-1'\)'s memory at offset 3, \d+ bytes, lies outside the data section/);
  throwsExport(() => StaticBank.load(edit((x) => (x.refs[1]!['id'] = 'fact-0'))), /reference 1 \('fact-0'\): the id is given twice/);
  throwsExport(() => StaticBank.load(edit((x) => (x.manifest['kvHeads'] = 0))), /the manifest's kvHeads must be a positive integer, got 0/);
  throwsExport(() => StaticBank.load(edit((x) => (x.manifest['tokens'] = 4))), /reference 0 \('fact-0'\): its memory has shape \(L 1, 2, Hkv 2, T 8, D 8\) bf16, but the bank holds \(L 1, 2, Hkv 2, T 4, D 8\) bf16/);
});
