// `engram serve` through OpenAI's own client (openai-node) against a running server on 127.0.0.1:
// completions and chat, plain and streamed (the streamed text equals the plain one), the models
// list, memory endpoints (an added reference changes the next answer, a removed one stops being
// retrieved), OpenAI-shaped errors for bad requests, 32 concurrent streams, malformed requests
// answered with 4xx only, and a graceful close.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import OpenAI from 'openai';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { MemoryBank } from '../memory3/bank.ts';
import { encodeMemory } from '../memory3/blob.ts';
import { MemoryReader } from '../memory3/read.ts';
import { writeMemories } from '../memory3/write.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { Engine } from './engine.ts';
import { buildServer, shutdown } from './server.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-serve-'));
after(() => rm(root, { recursive: true, force: true }));

const FACTS = [
  'The zorblat river flows into the grey sea near the town of Orrim.',
  'Professor Ankerlin keeps seven green parrots in her kitchen in Vellport.',
  'The old lighthouse of Marrow Point was painted red in the year of the storm.',
];
const NEW_FACT = 'The capital of Quellmark is the harbour city of Danzibor.';

async function start() {
  const gpu = await testGpu();
  const file = join(root, 'train.txt');
  await writeFile(file, `${[...FACTS, NEW_FACT].join('\n')}\nQ: What is the capital of Quellmark?\nA: Danzibor.\n<|endoftext|>\n`);
  const tok = await Tokenizer.fromJson(await trainTokenizer([file], { vocabSize: 320, special: ['<|endoftext|>'] }));
  const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 128, tiedEmbeddings: true });
  const model = await Transformer.create(gpu, config, 3);
  const layers = [0];
  const bank = await MemoryBank.open(join(root, 'bank'), { create: true, model: { fingerprint: 'serve-test', layers, kvHeads: 2, tokens: 8, headDim: 8, dtype: 'f32' } });
  const written = await writeMemories(gpu, model, tok, FACTS, { layers, dtype: 'f32' });
  await bank.add(written.map((w, i) => ({ id: `f${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
  const engine = await Engine.create(gpu, model, tok, { slots: 8, reader: new MemoryReader(gpu, model, tok, bank) });
  const app = await buildServer({ gpu, model, tok, engine, bank, name: 'tiny', memory: false, bodyLimit: 64 * 1024 });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
  return { app, engine, bank, model, client, url };
}

const s = await start();
after(async () => {
  await shutdown(s.app, s.engine);
  s.bank.close();
  s.model.dispose();
});

test('models, completions and chat, plain and streamed', async () => {
  const { client } = s;
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  const c = await client.completions.create({ model: 'tiny', prompt: 'The zorblat river', max_tokens: 10, temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.choices.length, 1);
  assert.ok(['stop', 'length'].includes(c.choices[0]!.finish_reason));
  assert.equal(c.usage!.prompt_tokens + c.usage!.completion_tokens, c.usage!.total_tokens);
  // the stream's deltas make up the same text
  const stream = await client.completions.create({ model: 'tiny', prompt: 'The zorblat river', max_tokens: 10, temperature: 0, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, c.choices[0]!.text);
  assert.equal(finish, c.choices[0]!.finish_reason);
  const messages = [{ role: 'user' as const, content: 'Where does the zorblat river flow?' }];
  const chat = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0]!.message.role, 'assistant');
  const cs = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let content = '';
  let role = '';
  let usage = 0;
  for await (const chunk of cs) {
    role ||= chunk.choices[0]?.delta.role ?? '';
    content += chunk.choices[0]?.delta.content ?? '';
    usage += chunk.usage?.completion_tokens ?? 0;
  }
  assert.equal(role, 'assistant');
  assert.equal(content, chat.choices[0]!.message.content);
  assert.equal(usage, chat.usage!.completion_tokens);
});

test('memory: an added reference is read by the next request and changes its answer; removed, it is gone', async () => {
  const { client, url } = s;
  const ask = async () => {
    const r = (await client.completions.create({ model: 'tiny', prompt: 'The capital of Quellmark is', max_tokens: 12, temperature: 1, seed: 1, memory: true } as OpenAI.CompletionCreateParamsNonStreaming)) as OpenAI.Completion & { engram: { chunks: { retrieved: { id: string }[] }[] } };
    return { text: r.choices[0]!.text, ids: r.engram.chunks.flatMap((c) => c.retrieved.map((h) => h.id)) };
  };
  const before = await ask();
  assert.ok(!before.ids.includes('quellmark'));
  const added = await fetch(`${url}/v1/memory`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: NEW_FACT, id: 'quellmark' }) });
  assert.equal(added.status, 201);
  assert.equal(((await added.json()) as { id: string }).id, 'quellmark');
  const withFact = await ask();
  assert.ok(withFact.ids.includes('quellmark'), `retrieved ${withFact.ids}`);
  assert.notEqual(withFact.text, before.text);
  const list = (await (await fetch(`${url}/v1/memory?limit=10`)).json()) as { data: { id: string }[]; total: number };
  assert.equal(list.total, 4);
  const found = (await (await fetch(`${url}/v1/memory/search?q=Quellmark%20capital&k=1`)).json()) as { data: { id: string }[] };
  assert.deepEqual(found.data.map((h) => h.id), ['quellmark']);
  assert.equal((await fetch(`${url}/v1/memory/quellmark`, { method: 'DELETE' })).status, 200);
  const removed = await ask();
  assert.ok(!removed.ids.includes('quellmark'));
  if (removed.ids.join() === before.ids.join()) assert.equal(removed.text, before.text);
  const again = await fetch(`${url}/v1/memory/quellmark`, { method: 'DELETE' });
  assert.equal(again.status, 404);
  const short = await fetch(`${url}/v1/memory`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'Hi.' }) });
  assert.equal(short.status, 400);
  assert.match(((await short.json()) as { error: { message: string } }).error.message, /tokens/);
});

test('bad requests get OpenAI-shaped 4xx errors through the client', async () => {
  const { client } = s;
  const fails = async (p: Promise<unknown>, status: number, pattern: RegExp) => {
    await assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof OpenAI.APIError, String(e));
      assert.equal(e.status, status);
      assert.match(e.message, pattern);
      return true;
    });
  };
  await fails(client.completions.create({ model: 'other', prompt: 'x', max_tokens: 3 }), 404, /does not exist/);
  await fails(client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: -2 }), 400, /max_tokens/);
  await fails(client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 1000 }), 400, /at most/);
  await fails(client.completions.create({ model: 'tiny', prompt: 'x', temperature: 7 }), 400, /temperature/);
  await fails(client.completions.create({ model: 'tiny', prompt: 'word '.repeat(400) }), 400, /prompt has \d+ tokens/);
  await fails(client.chat.completions.create({ model: 'tiny', messages: [] }), 400, /messages/);
  await fails(client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], n: 2 }), 400, /'n'/);
});

test('32 concurrent streams complete well formed; malformed requests get 4xx and the server goes on', async () => {
  const { client, url } = s;
  const t0 = performance.now();
  const runs = await Promise.all(
    Array.from({ length: 32 }, async (_, i) => {
      const stream = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: `Question ${i}: what is the river?` }], max_tokens: 6, temperature: 0.8, seed: i, stream: true });
      let finishes = 0;
      let chunks = 0;
      for await (const c of stream) {
        chunks++;
        if (c.choices[0]?.finish_reason) finishes++;
      }
      return { chunks, finishes };
    }),
  );
  for (const r of runs) {
    assert.equal(r.finishes, 1);
    assert.ok(r.chunks >= 2);
  }
  console.log(`# 32 streams in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const post = (path: string, body: string, type = 'application/json') => fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
  const bad: [string, string, string?][] = [
    ['/v1/completions', '{"model": "tiny", "prompt": '],
    ['/v1/completions', 'null'],
    ['/v1/completions', '[1,2]'],
    ['/v1/completions', '{"model": 3, "prompt": "x"}'],
    ['/v1/completions', '{"model": "tiny", "prompt": {"a": 1}}'],
    ['/v1/completions', '{"model": "tiny", "prompt": "x", "max_tokens": "ten"}'],
    ['/v1/completions', '{"model": "tiny", "prompt": "x", "max_tokens": 1.5}'],
    ['/v1/completions', '{"model": "tiny", "prompt": "x", "stop": [1]}'],
    ['/v1/completions', '{"model": "tiny", "prompt": ""}'],
    ['/v1/completions', JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(100_000) })],
    ['/v1/chat/completions', '{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}'],
    ['/v1/chat/completions', '{"model": "tiny", "messages": "hello"}'],
    ['/v1/completions', 'model=tiny', 'text/plain'],
    ['/v1/nowhere', '{}'],
    ['/v1/memory', '{"text": 5}'],
  ];
  for (const [path, body, type] of bad) {
    const r = await post(path, body, type);
    assert.ok(r.status >= 400 && r.status < 500, `${path} ${body.slice(0, 60)}: ${r.status}`);
    const e = (await r.json()) as { error?: { message?: string; type?: string } };
    assert.equal(typeof e.error?.message, 'string', `${path} ${body.slice(0, 60)}`);
  }
  const ok = await client.completions.create({ model: 'tiny', prompt: 'still', max_tokens: 2 });
  assert.equal(ok.choices.length, 1);
});

test('a client that goes away is cancelled: its slot is freed', async () => {
  const { url, engine } = s;
  const before = engine.stats().tokens;
  const ac = new AbortController();
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'The old lighthouse', max_tokens: 120, stream: true }), signal: ac.signal });
  const reader = r.body!.getReader();
  await reader.read();
  ac.abort();
  for (let i = 0; i < 200 && engine.stats().active > 0; i++) await new Promise((res) => setTimeout(res, 10));
  assert.equal(engine.stats().active, 0);
  assert.ok(engine.stats().tokens - before < 120, `${engine.stats().tokens - before} tokens generated`);
});
