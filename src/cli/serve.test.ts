// `engram chat` on piped streams (memory on and off, references shown, commands), and `engram
// serve` as its own process: it serves, and on SIGTERM finishes a running stream before it exits 0.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { saveModel } from '../model/checkpoint.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { memoryBuildCommand } from './memory.ts';
import { chatCommand } from './serve.ts';

const FACTS = [
  'The zorblat river flows into the grey sea near the town of Orrim.',
  'Professor Ankerlin keeps seven green parrots in her kitchen in Vellport.',
  'The old lighthouse of Marrow Point was painted red in the year of the storm.',
];
const root = await mkdtemp(join(tmpdir(), 'engram-cli-serve-'));
after(() => rm(root, { recursive: true, force: true }));
const model = join(root, 'model');
const bank = join(root, 'bank');

before(async () => {
  const gpu = await testGpu();
  const corpus = join(root, 'corpus.txt');
  await writeFile(corpus, `${FACTS.join('\n')}\nQ: Where does the river flow?\nA: Into the grey sea.\n`);
  const tokJson = await trainTokenizer([corpus], { vocabSize: 300, special: ['<|endoftext|>'] });
  const tok = await Tokenizer.fromJson(tokJson);
  const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 96, tiedEmbeddings: true });
  const m = await Transformer.create(gpu, config, 5);
  await saveModel(gpu, model, m, { 'tokenizer.json': tokJson });
  m.dispose();
  await writeFile(join(root, 'facts.txt'), FACTS.join('\n'));
  await memoryBuildCommand({ model, bank, from: join(root, 'facts.txt'), layers: [0], dtype: 'f32' }, { gpu, write: () => {}, log: () => {} });
});

test('engram chat: streamed answers, references shown with memory on, commands', async () => {
  const gpu = await testGpu();
  const lines = ['Where does the zorblat river flow?', '/memory off', 'Who keeps parrots?', '/memory on', '/refs off', 'Who keeps parrots?', '/reset', '/nonsense', '/quit', 'never read'];
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => (text += d.toString()));
  await chatCommand({ model, bank, chatTemplate: 'qa', maxTokens: 8, temperature: 0, seed: 0 }, { input: Readable.from(lines.map((l) => `${l}\n`)), output: out, gpu });
  const turns = text.split('> ');
  // turn 1: an answer, then what its chunk retrieved (the river fact's reference among them)
  assert.match(turns[1]!, /\[tokens 0-\d+, "Q: Where does the zorblat river flow/);
  assert.match(turns[1]!, /zorblat river flows/);
  assert.match(turns[2]!, /^memory off/);
  assert.doesNotMatch(turns[3]!, /\[tokens/);
  assert.match(turns[4]!, /^memory on/);
  assert.match(turns[5]!, /^references hidden/);
  assert.doesNotMatch(turns[6]!, /\[tokens/);
  assert.match(turns[7]!, /^conversation cleared/);
  assert.match(turns[8]!, /^commands: /);
  assert.doesNotMatch(text, /never read/);
});

test('engram serve: serves over HTTP; SIGTERM lets a running stream finish, then it exits 0', { timeout: 120_000 }, async () => {
  const main = fileURLToPath(new URL('./main.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', main, 'serve', '--model', model, '--memory-bank', bank, '--port', '0', '--name', 'tiny', '--slots', '4'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /at (http:\/\/[^\s]+)\/v1/.exec(err);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`engram serve exited ${code}: ${err}`)));
  });
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'The old lighthouse', max_tokens: 60, temperature: 0, stream: true }) });
  const reader = r.body!.getReader();
  const first = await reader.read();
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  child.kill('SIGTERM');
  let body = new TextDecoder().decode(first.value);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    body += new TextDecoder().decode(value);
  }
  assert.match(body, /"finish_reason":"length"/);
  assert.match(body, /data: \[DONE\]\n\n$/);
  assert.equal(await exited, 0, err);
  assert.match(err, /SIGTERM: finishing the running requests/);
});
