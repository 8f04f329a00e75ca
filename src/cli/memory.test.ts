// `engram memory` and `engram generate --memory` on a tiny random model saved as a checkpoint (with a
// tokenizer trained on the references): build from a .txt and a .jsonl file, list, search, add, remove,
// generation reading memories, a bank refused for another model, files with a bad line adding nothing,
// a product-quantised bank (build learns its codebooks, add codes with them, generate decodes), and one
// run of the real command line.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { saveModel } from '../model/checkpoint.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { StaticBank } from '../memory3/export.ts';
import { testGpu } from '../testing/gpu.ts';
import {
  generateWithMemoryCommand,
  memoryAddCommand,
  memoryBuildCommand,
  memoryExportCommand,
  memoryListCommand,
  memoryRemoveCommand,
  memorySearchCommand,
  readBankManifest,
  type MemoryEnv,
} from './memory.ts';

const FACTS = [
  'The zorblat river flows into the grey sea past the town of Hollin.',
  'Professor Ankerlin keeps seven green parrots in her kitchen in Vellport.',
  'The old lighthouse of Marrow Point was painted red in the year of the storm.',
  'Queen Isolde of Dunmere wrote forty letters to the baker of the harbour.',
  'A copper bell hangs in the tower of Saint Orrin and rings at every dawn.',
];
const EXTRA = 'The quiet glassmaker of Pellam blows blue bottles for the winter market.';

const root = await mkdtemp(join(tmpdir(), 'engram-cli-memory-'));
after(() => rm(root, { recursive: true, force: true }));
const modelA = join(root, 'model-a');
const modelB = join(root, 'model-b');
let gpu: Gpu;

before(async () => {
  gpu = await testGpu();
  const corpus = join(root, 'corpus.txt');
  await writeFile(corpus, `${[...FACTS, EXTRA].join('\n')}\nReference: Who keeps parrots? Where does the river flow?\n`);
  const tokJson = await trainTokenizer([corpus], { vocabSize: 300, special: ['<|endoftext|>'] });
  const tok = await Tokenizer.fromJson(tokJson);
  const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 4, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 96, tiedEmbeddings: true });
  for (const [dir, seed] of [
    [modelA, 7],
    [modelB, 8],
  ] as const) {
    const model = await Transformer.create(gpu, config, seed);
    try {
      await saveModel(gpu, dir, model, { 'tokenizer.json': tokJson });
    } finally {
      model.dispose();
    }
  }
});

/** an env on the test GPU that records stdout and stderr */
function capture(): MemoryEnv & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { gpu, out, err, write: (s) => void out.push(s), log: (l) => void err.push(l) };
}

test('build from a .txt file into <model>.memory, list, search, add, remove', async () => {
  const refs = join(root, 'facts.txt');
  await writeFile(refs, `${FACTS[0]}\n\n${FACTS.slice(1).join('\n')}\n   \n`);
  const env = capture();
  const built = await memoryBuildCommand({ model: modelA, from: refs, batch: 2 }, env);
  const bank = `${modelA}.memory`;
  assert.ok(existsSync(bank));
  assert.equal(built.count, 5);
  assert.equal(built.ids.length, 5);
  assert.equal(env.err.length, 3, env.err.join('\n')); // a progress line per batch of 2
  assert.match(env.err.at(-1)!, /5\/5 references written/);
  assert.match(env.out.join(''), /added 5 references .* refs\/s\); the bank holds 5/);
  const m = await readBankManifest(bank);
  assert.deepEqual([m!.layers, m!.tokens, m!.dtype, m!.kvHeads, m!.headDim], [[0, 1], 8, 'bf16', 2, 8]);

  // list: by --model (its bank), all five, in file order
  const list = capture();
  const rows = await memoryListCommand({ model: modelA }, list);
  assert.deepEqual(rows.map((r) => r.text), FACTS);
  assert.deepEqual(rows.map((r) => r.id), built.ids);
  assert.equal(list.out.length, 5);
  assert.match(list.err[0]!, /1-5 of 5 references/);
  assert.deepEqual((await memoryListCommand({ bank, offset: 3, limit: 1 }, capture())).map((r) => r.text), [FACTS[3]]);

  // search: the distinctive reference first, line "id\tscore\ttext"
  const s = capture();
  const hits = await memorySearchCommand({ bank, query: 'who keeps green parrots', k: 2 }, s);
  assert.equal(hits[0]!.text, FACTS[1]);
  assert.equal(hits[0]!.id, built.ids[1]);
  assert.match(s.out[0]!, new RegExp(`^${built.ids[1]}\\t\\d+\\.\\d{3}\\tProfessor Ankerlin`));

  // add (model opened again with the bank inside its folder): found by the very next search
  const added = capture();
  const id = await memoryAddCommand({ model: modelA, text: EXTRA, id: 'glass' }, added);
  assert.equal(id, 'glass');
  assert.deepEqual(added.out, ['glass\n']);
  assert.equal((await memorySearchCommand({ bank, query: 'glassmaker blue bottles' }, capture()))[0]?.id, 'glass');
  await assert.rejects(memoryAddCommand({ model: modelA, text: EXTRA, id: 'glass' }, capture()), /id 'glass' is already in the bank/);
  await assert.rejects(memoryAddCommand({ model: modelA, text: 'the sea' }, capture()), /--text: the reference 'the sea' has \d tokens; .* needs at least 8/);

  // remove: unknown ids remove nothing; then the reference is gone from search and list
  await assert.rejects(memoryRemoveCommand({ bank, ids: ['glass', 'nope'] }, capture()), /has no reference 'nope'; nothing was removed/);
  assert.equal((await memoryListCommand({ bank }, capture())).length, 6);
  const rm1 = capture();
  assert.equal(await memoryRemoveCommand({ bank, ids: ['glass', built.ids[0]!] }, rm1), 2);
  assert.match(rm1.out[0]!, /removed 2 references; the bank holds 4/);
  assert.ok(!(await memorySearchCommand({ bank, query: 'glassmaker blue bottles' }, capture())).some((h) => h.id === 'glass'));
  assert.deepEqual((await memoryListCommand({ bank }, capture())).map((r) => r.text), FACTS.slice(1));
  await assert.rejects(memoryListCommand({ bank: join(root, 'nothing') }, capture()), /no memory bank at .*nothing: build one with `engram memory build/);
  await assert.rejects(memoryListCommand({}, capture()), /give the bank with --bank/);
});

test('.jsonl with ids and memory dims; a bad line names itself and adds nothing; another model is refused', async () => {
  const bank = join(root, 'bank-jsonl');
  const file = join(root, 'facts.jsonl');
  await writeFile(file, FACTS.map((text, i) => JSON.stringify({ id: `f${i}`, text })).join('\n') + '\n');
  const env = capture();
  const built = await memoryBuildCommand({ model: modelA, bank, from: file, layers: [1, 3], tokens: 4, dtype: 'f32' }, env);
  assert.deepEqual(built.ids, ['f0', 'f1', 'f2', 'f3', 'f4']);
  const m = await readBankManifest(bank);
  assert.deepEqual([m!.layers, m!.tokens, m!.dtype], [[1, 3], 4, 'f32']);
  assert.equal((await memorySearchCommand({ bank, query: 'copper bell tower dawn' }, capture()))[0]?.id, 'f4');
  // a later add takes the bank's dims when none are given
  assert.equal(await memoryAddCommand({ model: modelA, bank, text: EXTRA }, capture()).then((id) => typeof id), 'string');

  // bad files: every reference is checked before anything is written
  const bad = async (name: string, body: string, want: RegExp, tokens?: number) => {
    const f = join(root, name);
    await writeFile(f, body);
    await assert.rejects(memoryBuildCommand({ model: modelA, bank, from: f, ...(tokens ? { tokens } : {}) }, capture()), want);
  };
  await bad('short.txt', `${FACTS[0]}\n${FACTS[1]}\nsea\n`, /short\.txt:3: the reference 'sea' has \d tokens; a memory keeps 4 per KV head/);
  await bad('twice.jsonl', `{"id":"x","text":${JSON.stringify(FACTS[0])}}\n{"id":"x","text":${JSON.stringify(FACTS[1])}}\n`, /twice\.jsonl:2: id 'x' is used twice \(first at .*twice\.jsonl:1\)/);
  await bad('taken.jsonl', `{"id":"new","text":${JSON.stringify(FACTS[0])}}\n{"id":"f2","text":${JSON.stringify(FACTS[1])}}\n`, /taken\.jsonl:2: id 'f2' is already in the bank/);
  await bad('broken.jsonl', `{"text":${JSON.stringify(FACTS[0])}}\n{"text": 3}\n`, /broken\.jsonl:2: "text" must be a non-empty string/);
  await bad('dims.txt', `${FACTS[0]}\n`, /holds memories with tokens 4, but this model asks for tokens 8: rebuild it/, 8);
  assert.equal((await memoryListCommand({ bank }, capture())).length, 6);
  // a new bank from a bad file is not even created
  await assert.rejects(memoryBuildCommand({ model: modelA, bank: join(root, 'never'), from: join(root, 'short.txt') }, capture()), /short\.txt:3/);
  assert.equal(existsSync(join(root, 'never')), false);

  // the same config, other weights: the bank's fingerprint error
  await assert.rejects(memoryAddCommand({ model: modelB, bank, text: EXTRA }, capture()), /memory bank at .*bank-jsonl was built for model [0-9a-f]{64}, not for this model \([0-9a-f]{64}\).*rebuild it with this model/);
  await assert.rejects(
    generateWithMemoryCommand({ model: modelB, memory: bank, prompt: ' Who keeps parrots?', maxNew: 2, temperature: 0, topP: 1, topK: 0, seed: 0, stop: '' }, capture()),
    /was built for model/,
  );
});

test('generate --memory: the continuation streams to stdout, what each chunk retrieved to stderr', async () => {
  const bank = join(root, 'bank-jsonl');
  const env = capture();
  const prompt = ' Who keeps seven green parrots in Vellport?';
  const got = await generateWithMemoryCommand({ model: modelA, memory: bank, prompt, maxNew: 6, temperature: 0, topP: 1, topK: 0, seed: 0, stop: '' }, env);
  assert.equal(env.out.join(''), `${prompt}${got.text}\n`);
  assert.equal(got.chunks.length, 1);
  assert.equal(got.chunks[0]!.retrieved[0]?.id, 'f1');
  assert.match(env.err[0]!, /^memory: tokens 0-\d+: \d references? for "Who keeps seven green parrots in Vellport\?"/);
  assert.match(env.err[1]!, /^ {2}f1 \(\d+\.\d% of the attention\): /);
  assert.ok(env.err[1]!.endsWith(FACTS[1]!));
  await assert.rejects(
    generateWithMemoryCommand({ model: modelA, memory: join(root, 'none'), prompt, maxNew: 2, temperature: 0, topP: 1, topK: 0, seed: 0, stop: '' }, capture()),
    /no memory bank at .*none/,
  );
});

test('the command line: engram memory list / remove (no model needed), errors without a stack', async () => {
  const bin = join(import.meta.dirname, '../../bin/engram.js');
  const run = promisify(execFile);
  const bank = join(root, 'bank-jsonl');
  const { stdout, stderr } = await run(process.execPath, [bin, 'memory', 'list', '--bank', bank, '--limit', '2']);
  assert.deepEqual(stdout.trim().split('\n').map((l) => l.split('\t')[0]), ['f0', 'f1']);
  assert.match(stderr, /1-2 of 6 references/);
  const fail = await run(process.execPath, [bin, 'memory', 'remove', '--bank', bank, '--id', 'f0,nope']).then(
    () => null,
    (e: { code: number; stderr: string }) => e,
  );
  assert.equal(fail?.code, 1);
  assert.equal(fail?.stderr.trim(), `engram memory remove: the bank at ${bank} has no reference 'nope'; nothing was removed`);
});

test('engram train --init --memory-kb: the second stage trains from a checkpoint with memories of a knowledge base', async () => {
  const { trainCommand } = await import('./commands.ts');
  const data = join(root, 'data');
  const { mkdir, readFile } = await import('node:fs/promises');
  await mkdir(data, { recursive: true });
  const tokJson = await readFile(join(modelA, 'tokenizer.json'), 'utf8');
  const tok = await Tokenizer.fromJson(tokJson);
  const ids = Uint32Array.from(tok.encode(Array.from({ length: 12 }, (_, i) => FACTS[i % FACTS.length]!).join(' ')));
  await writeFile(join(data, 'tokenizer.json'), tokJson);
  await writeFile(join(data, 'train.bin'), Buffer.from(ids.buffer));
  await writeFile(join(data, 'val.bin'), Buffer.from(ids.slice(0, 200).buffer));
  const kb = join(root, 'kb.txt');
  await writeFile(kb, `${[EXTRA, ...FACTS].join('\n')}\nshort\n`);
  const out = join(root, 'stage2');
  await trainCommand({ data, out, config: 'unused', steps: 2, batch: 2, seq: 64, accum: 1, lr: 1e-3, warmup: 1, evalEvery: 1, saveEvery: 0, seed: 0, init: modelA, memoryKb: kb, memoryWindow: 2, memoryTokens: 8, memoryGradient: false });
  assert.ok(existsSync(join(out, 'model.safetensors')) && existsSync(join(out, 'trainer.json')));
  // validation ran at both steps, with memories of references planned for the validation stream
  const history = JSON.parse(await readFile(join(out, 'history.json'), 'utf8')) as { step: number; valLoss?: number }[];
  assert.deepEqual(history.filter((h) => Number.isFinite(h.valLoss)).map((h) => h.step).slice(-2), [1, 2]);
  // with gradients through the references' encoding (modelA is dense): the weights move differently
  const outG = join(root, 'stage2g');
  await trainCommand({ data, out: outG, config: 'unused', steps: 2, batch: 2, seq: 64, accum: 1, lr: 1e-3, warmup: 1, evalEvery: 0, saveEvery: 0, seed: 0, init: modelA, memoryKb: kb, memoryWindow: 2, memoryTokens: 8, memoryGradient: true });
  const [plain, through] = await Promise.all([readFile(join(out, 'model.safetensors')), readFile(join(outG, 'model.safetensors'))]);
  assert.equal(plain.length, through.length);
  assert.ok(!plain.equals(through), 'gradients through the encoding should change the update');
  await assert.rejects(
    trainCommand({ data, out: join(root, 'stage2b'), config: 'unused', steps: 1, batch: 2, seq: 48, accum: 1, lr: 1e-3, warmup: 1, evalEvery: 0, saveEvery: 0, seed: 0, init: modelA, memoryKb: kb }),
    /--seq 48 must be a whole number of 64-token chunks/,
  );
});

test('memory gradient default: on for a dense model, off with a Memory+ block (its encoding has no backward)', async () => {
  const { memoryGradientDefault } = await import('./commands.ts');
  const base = { vocabSize: 64, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 64, tiedEmbeddings: true };
  const dense = await Transformer.create(gpu, parseModelConfig(base), 1);
  const withMemory = await Transformer.create(gpu, parseModelConfig({ ...base, memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8 } }), 1);
  try {
    assert.equal(memoryGradientDefault(dense), true);
    assert.equal(memoryGradientDefault(withMemory), false);
  } finally {
    dense.dispose();
    withMemory.dispose();
  }
});

test('--dtype pq: build learns codebooks and writes coded memories, add codes with the bank codebooks, generate reads them', async () => {
  const bank = join(root, 'bank-pq');
  const file = join(root, 'facts-pq.txt');
  await writeFile(file, `${FACTS.join('\n')}\n`);
  await assert.rejects(memoryAddCommand({ model: modelA, bank, text: EXTRA, dtype: 'pq' }, capture()), /a pq bank is made by `engram memory build --dtype pq`/);
  await assert.rejects(memoryBuildCommand({ model: modelA, bank, from: file, dtype: 'pq', vqBytes: 3 }, capture()), /--vq-bytes: expected a divisor of the head dim 8, got 3/);
  const env = capture();
  await memoryBuildCommand({ model: modelA, bank, from: file, dtype: 'pq', vqBytes: 2 }, env);
  assert.ok(env.err.some((l) => /learning pq codebooks from 5 references' memories/.test(l)), env.err.join('\n'));
  assert.equal((await readBankManifest(bank))!.dtype, 'pq');
  await memoryAddCommand({ model: modelA, bank, text: EXTRA }, capture());
  const got = await generateWithMemoryCommand({ model: modelA, memory: bank, prompt: ' Who blows blue bottles in Pellam?', maxNew: 3, temperature: 0, topP: 1, topK: 0, seed: 0, stop: '' }, capture());
  assert.ok(got.chunks[0]!.retrieved.some((h) => h.text === EXTRA), JSON.stringify(got.chunks));
});

test('export: the bank as one file that StaticBank reads back, --limit the first references', async () => {
  const bank = join(root, 'export-bank');
  const refs = join(root, 'export.txt');
  await writeFile(refs, FACTS.join('\n'));
  await memoryBuildCommand({ model: modelA, bank, from: refs }, capture());
  const out = join(root, 'bank.engram');
  const env = capture();
  await memoryExportCommand({ bank, out }, env);
  assert.match(env.err.join('\n'), new RegExp(`${FACTS.length} references`));
  const all = StaticBank.load(new Uint8Array(await readFile(out)));
  const listed = await memoryListCommand({ bank }, capture());
  assert.deepEqual((await all.get(listed.map((r) => r.id))).map((r) => r.text), listed.map((r) => r.text));
  await memoryExportCommand({ bank, out, limit: 2 }, capture());
  const two = StaticBank.load(new Uint8Array(await readFile(out)));
  assert.equal((await two.get(listed.map((r) => r.id))).length, 2);
  await assert.rejects(memoryExportCommand({ bank: join(root, 'nowhere'), out }, capture()), /no memory bank/);
});
