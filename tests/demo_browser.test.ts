// the browser demo (web/) end to end in headless Chromium: fixtures made here on the test's
// adapter (a tokenizer trained on the references, a tiny model with a Memory+ block saved as
// a checkpoint, a bank of its memories of 20 references exported as one file), the demo built with
// Vite's API and served with them on 127.0.0.1 (web/serve.ts), then driven through playwright-core:
// it loads, a prompt sharing words with one reference is typed, Generate clicked; the page must
// show generated text, the references the export's search returns for that prompt (in order), and
// Memory+ slots for every token, and the tokens the same reader generates in Node, with no page
// error; a screenshot is saved (its path is printed). then memory off: no references, and the
// plain decode's tokens (infer/generate.ts generate in Node). the model is trained for a few seconds
// on the references first, so that it writes words (an untrained one repeats a byte): still, the
// mechanics are what is checked, not what it knows. a bank that is not there is an error on the page. no Chromium is a loud failure (install it:
// .ci/install-chromium.sh, or point ENGRAM_CHROMIUM at one).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { chromium } from 'playwright-core';
import { build } from 'vite';
import { Tokenizer, trainTokenizer } from '../src/data/tokenizer.ts';
import { MemoryBank } from '../src/memory3/bank.ts';
import { encodeMemory } from '../src/memory3/blob.ts';
import { exportBank, StaticBank } from '../src/memory3/export.ts';
import { MemoryReader } from '../src/memory3/read.ts';
import { generate } from '../src/infer/generate.ts';
import { defaultMemoryLayers, modelFingerprint, writeMemories } from '../src/memory3/write.ts';
import { saveModel } from '../src/model/checkpoint.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import type { Gpu } from '../src/gpu/device.ts';
import { testGpu } from '../src/testing/gpu.ts';
import { Rng } from '../src/testing/rng.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { Trainer } from '../src/train/trainer.ts';
import { serveDemo } from '../web/serve.ts';

const CHROMIUM = process.env['ENGRAM_CHROMIUM'] ?? '/usr/bin/chromium';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCREENSHOT = join(ROOT, '.out', 'demo_browser.png');
const MAX_NEW = 16;
const TRAIN_STEPS = 80;

const tmp = await mkdtemp(join(tmpdir(), 'engram-demo-'));
after(() => rm(tmp, { recursive: true, force: true }));

// 20 references, each with a name of its own
const NAMES = ['Zorblat', 'Quenmoor', 'Vextaria', 'Plimquat', 'Dravith', 'Kelblax', 'Murtaria', 'Tashmoor', 'Ulobrin', 'Brinquat', 'Orrimel', 'Fandrel', 'Gostavik', 'Hennilow', 'Istrapel', 'Jorvane', 'Lussadar', 'Nimbrecht', 'Pellowin', 'Rastagon'];
const KINDS = ['river', 'mountain', 'festival', 'machine', 'language'];
const REFERENCES = NAMES.map((n, i) => `The ${KINDS[i % 5]} ${n} was first recorded in the year ${1200 + 7 * i} by the monks of the northern valley.`);
const PROMPT = 'The festival Vextaria was first recorded in the year';
const TARGET = 'ref-2';

/** the checkpoint folder and the bank export file the page loads; the references its search gives for PROMPT, and the greedy continuations (Node, lavapipe) with them and without memory */
async function fixtures(): Promise<{ model: string; bank: string; expected: string[]; ids: number[]; plain: number[] }> {
  const gpu = await testGpu();
  const corpus = join(tmp, 'corpus.txt');
  await writeFile(corpus, `${REFERENCES.join('\n')}\n${PROMPT}\nReference: Q: When was the river recorded? A: in the year 1200.\n`);
  const json = await trainTokenizer([corpus], { vocabSize: 400, special: ['<|endoftext|>'] });
  const tok = await Tokenizer.fromJson(json);
  const config = parseModelConfig({
    vocabSize: tok.vocabSize,
    dim: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffnHidden: 128,
    maxSeqLen: 128,
    tiedEmbeddings: true,
    memory: { layers: [1], nKeys: 16, heads: 2, topk: 4, keyDim: 32, valueDtype: 'f32' },
  });
  const model = await Transformer.create(gpu, config, 11);
  const dir = join(tmp, 'model');
  try {
    await train(gpu, model, tok);
    await saveModel(gpu, dir, model, { 'tokenizer.json': json });
    const files = Object.fromEntries(await Promise.all(['config.json', 'model.safetensors', 'tokenizer.json'].map(async (f) => [f, new Uint8Array(await readFile(join(dir, f)))] as const)));
    const written = await writeMemories(gpu, model, tok, REFERENCES);
    const bank = await MemoryBank.open(join(tmp, 'bank'), {
      create: true,
      model: { fingerprint: modelFingerprint(files), layers: defaultMemoryLayers(config), kvHeads: config.kvHeads, tokens: 8, headDim: config.dim / config.heads, dtype: 'bf16' },
    });
    try {
      await bank.add(written.map((w, i) => ({ id: `ref-${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
      const bytes = await exportBank(bank);
      const file = join(tmp, 'bank.engram');
      await writeFile(file, bytes);
      // what the reader retrieves for the prompt's one chunk: the export's search with the prompt's text (5 references)
      const expected = (await StaticBank.load(bytes).search(tok.decode(tok.encode(PROMPT)), { k: 5 })).map((h) => h.id);
      // and what it generates here, greedy (the page's default), as the worker does it
      const prompt = Array.from(tok.encode(PROMPT));
      const o = { maxNew: MAX_NEW, temperature: 0, stopIds: [tok.tokenId('<|endoftext|>')!] };
      const { ids } = await new MemoryReader(gpu, model, tok, StaticBank.load(bytes)).generate(prompt, o);
      return { model: dir, bank: file, expected, ids, plain: await generate(gpu, model, prompt, o) };
    } finally {
      bank.close();
    }
  } finally {
    model.dispose();
  }
}

/** a few steps on the references (each a document ended by EOT), so that greedy decoding writes words rather than one repeated byte */
async function train(gpu: Gpu, model: Transformer, tok: Tokenizer): Promise<void> {
  const eot = tok.tokenId('<|endoftext|>')!;
  const stream = REFERENCES.flatMap((r) => [...tok.encode(r), eot]);
  const [B, T] = [8, 48];
  const rng = new Rng(5);
  const opt = await AdamW.create(gpu, model.params, { lr: 1e-2 });
  const trainer = new Trainer(gpu, model, opt, { warmup: 5, steps: TRAIN_STEPS, minRatio: 0.1 });
  try {
    let loss = 0;
    for (let s = 0; s < TRAIN_STEPS; s++) {
      const starts = Array.from({ length: B }, () => rng.int(stream.length - T - 1));
      const ids = await gpu.tensorFrom(starts.flatMap((a) => stream.slice(a, a + T)), [B, T], 'u32', 'ids');
      const targets = await gpu.tensorFrom(starts.flatMap((a) => stream.slice(a + 1, a + T + 1)), [B, T], 'u32', 'targets');
      try {
        loss = (await trainer.step([{ ids, targets }])).loss;
      } finally {
        ids.dispose();
        targets.dispose();
      }
    }
    console.log(`# trained ${TRAIN_STEPS} steps: loss ${loss.toFixed(3)}`);
  } finally {
    opt.dispose();
  }
}

test('the browser demo loads a checkpoint and a bank export, generates in a worker, shows references and Memory+ slots', { timeout: 300_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install it (.ci/install-chromium.sh, or Debian: apt-get install chromium) or set ENGRAM_CHROMIUM to its path`);
  const t0 = performance.now();
  const { model, bank, expected, ids, plain } = await fixtures();
  assert.equal(expected[0], TARGET, `the prompt's best reference: ${expected.join(', ')}`);
  const site = join(tmp, 'site');
  await build({ configFile: join(ROOT, 'web', 'vite.config.ts'), logLevel: 'warn', build: { outDir: site, emptyOutDir: true } });
  const t1 = performance.now();
  const server = await serveDemo({ site, model, bank });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const errors: string[] = [];
  const logs: string[] = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => logs.push(`page ${m.type()}: ${m.text()}`));
    page.on('worker', (w) => w.on('console', (m) => logs.push(`worker ${m.type()}: ${m.text()}`)));
    await page.goto(server.url);
    const state = async (want: string[], timeout: number): Promise<string> => {
      try {
        await page.waitForFunction((w) => w.includes(document.body.dataset['state'] ?? ''), want, { timeout });
      } catch (e) {
        throw new Error(`the page did not reach ${want.join(' or ')}: state ${await page.evaluate(() => document.body.dataset['state'])}, status '${await page.textContent('#status')}', error '${await page.textContent('#error')}'\n${logs.join('\n')}`, { cause: e });
      }
      const s = (await page.evaluate(() => document.body.dataset['state']))!;
      assert.notEqual(s, 'error', `the page failed: ${await page.textContent('#error')}\n${logs.join('\n')}`);
      return s;
    };
    await state(['ready', 'error'], 120_000);
    const t2 = performance.now();
    const status = (await page.textContent('#status'))!;
    console.log(`# ${status}`);
    assert.match(status, /WebGPU adapter: \S/);
    assert.match(status, /20 references/);

    await page.fill('#prompt', PROMPT);
    await page.fill('#max-new', String(MAX_NEW));
    assert.ok(await page.isChecked('#memory'));
    await page.click('#generate');
    await state(['done', 'error'], 150_000);
    const t3 = performance.now();

    const generated = (await page.textContent('#generated'))!;
    console.log(`# generated: ${JSON.stringify(generated)}`);
    assert.ok(generated.length > 0, 'generated text is shown');
    assert.equal(await page.textContent('#prompt-echo'), PROMPT);
    // the references shown are the ones the export's search returns for the prompt, in order
    const shown = await page.$$eval('#references li.reference', (li) => li.map((x) => (x as HTMLElement).dataset['id']));
    assert.deepEqual(shown, expected);
    assert.match((await page.textContent('#references li.reference'))!, /festival Vextaria/);
    // a row per generated token, each with the Memory+ block's picks for both heads
    const rows = await page.$$eval('#slots tbody tr', (tr) => tr.map((x) => x.textContent ?? ''));
    assert.ok(rows.length >= 1 && rows.length <= MAX_NEW, `${rows.length} token rows`);
    for (const r of rows) assert.match(r, /block 1: h0 \d+ \(\d\.\d\d\)( \d+ \(\d\.\d\d\)){3}h1 \d+ /);
    console.log(`# first token's slots: ${rows[0]}`);
    // the same tokens as the reader in Node: the same model read the same memories (greedy, and after training no close calls)
    assert.deepEqual(await page.$$eval('#slots tbody tr', (tr) => tr.map((x) => Number((x as HTMLElement).dataset['id']))), ids);
    assert.deepEqual(errors, []);

    await mkdir(join(ROOT, '.out'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`# screenshot: ${SCREENSHOT}`);

    // memory off: nothing retrieved, the plain decode's tokens, still with their slots
    await page.uncheck('#memory');
    await page.click('#generate');
    await state(['done', 'error'], 150_000);
    assert.equal(await page.$$eval('#references li.reference', (li) => li.length), 0);
    assert.equal(await page.textContent('#references'), 'memory is off');
    const off = await page.$$eval('#slots tbody tr', (tr) => tr.map((x) => ({ id: Number((x as HTMLElement).dataset['id']), text: x.textContent ?? '' })));
    assert.deepEqual(off.map((r) => r.id), plain);
    for (const r of off) assert.match(r.text, /block 1: h0 \d+ /);
    console.log(`# memory off: ${JSON.stringify(await page.textContent('#generated'))}`);
    assert.deepEqual(errors, []);
    const t4 = performance.now();

    // a file that is not there: the page says which, and stays unusable
    const bad = await browser.newPage();
    await bad.goto(`${server.url}?bank=nope.engram`);
    await bad.waitForFunction(() => document.body.dataset['state'] === 'error', null, { timeout: 60_000 });
    assert.match((await bad.textContent('#error'))!, /fetching http:\/\/127\.0\.0\.1:\d+\/nope\.engram: HTTP 404/);
    assert.ok(await bad.isDisabled('#generate'));
    const s = (a: number, b: number) => ((b - a) / 1000).toFixed(1);
    console.log(`# fixtures (training ${TRAIN_STEPS} steps) + vite build ${s(t0, t1)} s, page load ${s(t1, t2)} s, ${rows.length} tokens with memory ${s(t2, t3)} s, ${off.length} without ${s(t3, t4)} s`);
  } finally {
    await browser.close();
    await server.close();
  }
});
