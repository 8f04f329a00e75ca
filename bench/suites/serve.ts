// suite `serve`: `engram serve` under load, through HTTP on 127.0.0.1 with OpenAI's client
//
//   npm run bench -- serve [--quick]
//
// a model of the explicit suite's size (dim 384, 6 blocks, heads of 64, vocab 8192; untrained:
// speed does not depend on the weights; --quick: dim 64, 2 blocks, vocab 1024, the CI machine's
// size) with a bank of every fact's statement (memory blocks: the first half), served by
// buildServer over an engine of 32 slots. the load: 32 clients, each sending `rounds` streaming
// completions one after another (a prompt of validation text, max_tokens OUT, temperature 0.8, no
// stop strings, half of them reading memories), all at once. then a fuzz run of malformed requests.
//   load_requests_s          requests completed per second over the load
//   load_tokens_s            completion tokens streamed per second over the load
//   load_ttft_ms_median      median time from a request to its first content chunk
//   engine_steps, engine_rows_per_step   decoding steps over the load and the rows each ran (the batch)
//   engine_step_ms           wall time of a decoding step (all its rows), mean
//   engine_prefill_ms        wall time of admitting a request (its prompt run alone, first token), mean
//   load_stream_errors       streams that ended without exactly one finish_reason chunk and [DONE] (want 0)
//   fuzz_requests            malformed requests sent (bad JSON, wrong types, huge prompts, negative limits, ...)
//   fuzz_4xx, fuzz_5xx       their answers by class (want every one 4xx); alive_after: 1 when a
//                            request after the fuzz run still succeeds
// writes bench/results/serve-<device>-<date>.json.

import { mkdtempSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { readTokens, writeTokenData } from '../../src/cli/commands.ts';
import { buildCorpus } from '../../src/data/corpus.ts';
import { loadFacts, statements } from '../../src/data/facts.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { MemoryBank } from '../../src/memory3/bank.ts';
import { encodeMemory } from '../../src/memory3/blob.ts';
import { MemoryReader } from '../../src/memory3/read.ts';
import { defaultMemoryLayers, referenceTokens, writeMemories } from '../../src/memory3/write.ts';
import { denseConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { Engine } from '../../src/serve/engine.ts';
import { buildServer, shutdown } from '../../src/serve/server.ts';
import { Rng } from '../../src/testing/rng.ts';
import { median } from '../lib.ts';
import type { SuiteOutput } from '../run.ts';

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const [dim, layers, vocab, CLIENTS, rounds, OUT, refs] = quick ? [64, 2, 1024, 32, 1, 16, 400] : [384, 6, 8192, 32, 4, 64, 4000];
  const dir = mkdtempSync(join(tmpdir(), 'engram-serve-bench-'));
  const log = (m: string) => console.error(`[serve] ${m}`);
  try {
    const corpus = buildCorpus({ maxBytes: 2 ** 20, practice: 0.5, seed: 0 });
    const tok = await writeTokenData(join(dir, 'data'), corpus, vocab);
    const val = readTokens(join(dir, 'data', 'val.bin'));
    const config = denseConfig({ vocabSize: tok.vocabSize, dim, layers, maxSeqLen: 512, headDim: dim > 64 ? 64 : dim / 4 });
    const model = await Transformer.create(gpu, config, 0);
    const memLayers = defaultMemoryLayers(config);
    const bank = await MemoryBank.open(join(dir, 'bank'), { create: true, model: { fingerprint: 'serve-bench', layers: memLayers, kvHeads: config.kvHeads, tokens: 8, headDim: dim / config.heads, dtype: 'bf16' } });
    const rng = new Rng(7);
    const texts = loadFacts().slice(0, refs).map((f) => statements(f, () => rng.next())[0]!).filter((t) => referenceTokens(tok, t).tokens.length >= 8);
    for (let i = 0; i < texts.length; i += 256) {
      const written = await writeMemories(gpu, model, tok, texts.slice(i, i + 256), { layers: memLayers, batch: 256 });
      await bank.add(written.map((w, j) => ({ id: `r${i + j}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })), { deferIndex: true });
    }
    await bank.reindex();
    const engine = await Engine.create(gpu, model, tok, { slots: 32, reader: new MemoryReader(gpu, model, tok, bank) });
    const app = await buildServer({ gpu, model, tok, engine, bank, name: 'bench', memory: false });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 600_000 });
    log(`model dim ${dim}, ${layers} blocks; bank of ${texts.length} references; serving at ${url}`);
    try {
      const prompt = (i: number) => tok.decode(Array.from(val.subarray((i * 97) % (val.length - 48), ((i * 97) % (val.length - 48)) + 48)));
      const one = async (i: number) => {
        const t = performance.now();
        let first = 0;
        let tokens = 0;
        let finishes = 0;
        const stream = await client.completions.create({ model: 'bench', prompt: prompt(i), max_tokens: OUT, temperature: 0.8, seed: i, stream: true, stream_options: { include_usage: true }, memory: i % 2 === 0 } as OpenAI.CompletionCreateParamsStreaming);
        for await (const c of stream) {
          if (c.choices[0]?.text) first ||= performance.now();
          if (c.choices[0]?.finish_reason) finishes++;
          tokens += c.usage?.completion_tokens ?? 0;
        }
        return { ttft: (first || performance.now()) - t, tokens, ok: finishes === 1 };
      };
      await one(0); // pipelines compile
      const e0 = engine.stats();
      const t0 = performance.now();
      const results = (await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
        const mine = [];
        for (let r = 0; r < rounds; r++) mine.push(await one(c * rounds + r + 1));
        return mine;
      }))).flat();
      const seconds = (performance.now() - t0) / 1000;
      const tokens = results.reduce((n, r) => n + r.tokens, 0);
      const e1 = engine.stats();
      const steps = e1.steps - e0.steps;
      const prefills = e1.prefills - e0.prefills;
      log(`${results.length} requests, ${tokens} tokens in ${seconds.toFixed(1)} s: ${steps} steps (${((e1.stepMs - e0.stepMs) / 1000).toFixed(1)} s), ${prefills} prompts (${((e1.prefillMs - e0.prefillMs) / 1000).toFixed(1)} s)`);
      // the fuzz run: raw HTTP, malformed in every way we could think of
      const fuzz: { body: string; type?: string; path?: string }[] = [];
      const frng = new Rng(11);
      const good = { model: 'bench', prompt: 'The river', max_tokens: 4 };
      const bad: unknown[] = [
        null, [], 'text', 42, {}, { model: 'bench' }, { ...good, model: 7 }, { ...good, model: 'nope' }, { ...good, prompt: 3 }, { ...good, prompt: ['a', 'b'] },
        { ...good, prompt: '' }, { ...good, prompt: 'word '.repeat(5000) }, { ...good, max_tokens: -1 }, { ...good, max_tokens: 0 }, { ...good, max_tokens: 1e9 },
        { ...good, max_tokens: 'many' }, { ...good, max_tokens: 2.5 }, { ...good, temperature: -1 }, { ...good, temperature: 'hot' }, { ...good, top_p: 0 },
        { ...good, n: 3 }, { ...good, stop: [1, 2] }, { ...good, stop: ['a', 'b', 'c', 'd', 'e'] }, { ...good, stream: 'yes' }, { ...good, memory: 'please' },
        { ...good, seed: 'x' }, { ...good, logprobs: 5 }, { ...good, echo: true },
      ];
      for (const b of bad) fuzz.push({ body: JSON.stringify(b) });
      for (const b of [{ model: 'bench', messages: [] }, { model: 'bench', messages: 'hi' }, { model: 'bench', messages: [{ role: 'robot', content: 'x' }] }, { model: 'bench', messages: [{ role: 'user' }] }, { model: 'bench', messages: [{ role: 'user', content: 'x' }], tools: [{}] }]) {
        fuzz.push({ body: JSON.stringify(b), path: '/v1/chat/completions' });
      }
      // truncated and corrupted JSON (a corruption that still parses is not kept: it may be a valid request)
      const parses = (x: string) => {
        try {
          JSON.parse(x);
          return true;
        } catch {
          return false;
        }
      };
      for (let i = 0; fuzz.length < bad.length + 45; i++) {
        const s = JSON.stringify({ ...good, prompt: `fuzz ${i}` });
        const chars = [...s];
        chars[frng.int(chars.length)] = String.fromCharCode(frng.int(128));
        const body = i % 2 ? s.slice(0, 1 + frng.int(s.length - 1)) : chars.join('');
        if (!parses(body)) fuzz.push({ body });
      }
      fuzz.push({ body: 'x'.repeat(2 << 20) }, { body: 'model=bench', type: 'text/plain' }, { body: '{}', path: '/v1/nothing' }, { body: '{"text": 3}', path: '/v1/memory' }, { body: '{"text": ""}', path: '/v1/memory' });
      let c4 = 0;
      let c5 = 0;
      for (const f of fuzz) {
        const r = await fetch(`${url}${f.path ?? '/v1/completions'}`, { method: 'POST', headers: { 'content-type': f.type ?? 'application/json' }, body: f.body });
        await r.arrayBuffer();
        if (r.status >= 400 && r.status < 500) c4++;
        else if (r.status >= 500) c5++;
      }
      const alive = (await client.completions.create({ model: 'bench', prompt: 'still there', max_tokens: 2 })).choices.length === 1;
      log(`fuzz: ${fuzz.length} malformed requests, ${c4} answered 4xx, ${c5} 5xx; alive after: ${alive}`);
      return {
        results: {
          load_requests_s: results.length / seconds,
          load_tokens_s: tokens / seconds,
          load_ttft_ms_median: median(results.map((r) => r.ttft)),
          load_stream_errors: results.filter((r) => !r.ok).length,
          load_requests: results.length,
          engine_steps: steps,
          engine_rows_per_step: (e1.tokens - e0.tokens - prefills) / steps,
          engine_step_ms: (e1.stepMs - e0.stepMs) / steps,
          engine_prefill_ms: (e1.prefillMs - e0.prefillMs) / prefills,
          fuzz_requests: fuzz.length,
          fuzz_4xx: c4,
          fuzz_5xx: c5,
          alive_after: alive ? 1 : 0,
        },
        notes: {
          setup: `dim ${dim}, ${layers} blocks (untrained), vocab ${tok.vocabSize}; engine of 32 slots; bank of ${texts.length} references (memory blocks [${memLayers.join(', ')}])`,
          load: `${CLIENTS} clients at once, ${rounds} streaming completions each in turn: 48 tokens of validation text, max_tokens ${OUT}, temperature 0.8, every other request reading memories; a request stops early only at the end-of-text token`,
        },
      };
    } finally {
      await shutdown(app, engine);
      bank.close();
      model.dispose();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
