// `engram serve`: an OpenAI-compatible HTTP server (fastify) over the decoding engine.
//
//   GET  /v1/models                      the one model served
//   POST /v1/completions                 text completion; "stream": true for server-sent events
//   POST /v1/chat/completions            chat (rendered by the chat template, openai.ts); streams too
//   GET  /v1/memory?offset=&limit=       the explicit-memory bank's references (id, text)
//   POST /v1/memory {"text", "id"?}      writes a reference's memory and adds it: the next request reads it
//   DELETE /v1/memory/:id                removes one: the next request no longer can
//   GET  /v1/memory/search?q=&k=         the bank's BM25 search
//
// every request shares the GPU through the engine's continuous batching (engine.ts). errors are
// OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad body (invalid
// JSON, a wrong type, a prompt or max_tokens past the limits), 404 for an unknown model, route or
// reference, 413 for a body over the limit, 503 while shutting down, 500 for a failure of ours. a
// request whose client goes away is cancelled (its slot is freed at the next step). close() stops
// taking connections, lets the running requests finish, then closes the engine.
//
// responses carry engram's `engram.chunks` (what each 64-token chunk retrieved) when memory was read.

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Tokenizer } from '../data/tokenizer.ts';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { checkNewIds, checkReferences, writeAndAdd } from '../memory3/add.ts';
import type { MemoryBank } from '../memory3/bank.ts';
import type { ChunkInfo } from '../memory3/read.ts';
import type { Transformer } from '../model/transformer.ts';
import type { Engine, EngineResult } from './engine.ts';
import { ApiError, ChatBody, CompletionBody, errorBody, MemoryAddBody, MemoryListQuery, MemorySearchQuery, parse, renderChat, type ChatTemplate } from './openai.ts';
import { TextDeltas } from './stream.ts';

export interface ServeOptions {
  gpu: Gpu;
  model: Transformer;
  tok: Tokenizer;
  engine: Engine;
  /** the name clients use (`model` in requests, /v1/models) */
  name: string;
  /** the bank behind /v1/memory and memory reading (the engine's reader reads the same one) */
  bank?: MemoryBank;
  /** read memories unless a request says otherwise (default: when there is a bank) */
  memory?: boolean;
  chatTemplate?: ChatTemplate;
  /** prompt tokens at most (default: the context less one) */
  maxPromptTokens?: number;
  /** max_tokens at most (default: the context) */
  maxTokens?: number;
  /** request body bytes at most (default 1 MiB) */
  bodyLimit?: number;
  /** fastify's logger (default off) */
  logger?: boolean;
}

const EOT = '<|endoftext|>';

export async function buildServer(o: ServeOptions): Promise<FastifyInstance> {
  const { engine, tok } = o;
  const context = engine.maxContext;
  const maxPrompt = o.maxPromptTokens ?? context - 1;
  const maxTokens = o.maxTokens ?? context;
  const memoryDefault = o.memory ?? !!o.bank;
  const template = o.chatTemplate ?? 'qa';
  const eot = tok.tokenId(EOT);
  const stopIds = eot !== undefined ? [eot] : [];
  const created = Math.floor(Date.now() / 1000);
  let closing = false;
  let seq = 0;

  const app = Fastify({ bodyLimit: o.bodyLimit ?? 1 << 20, logger: o.logger ?? false, forceCloseConnections: false });
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof ApiError) return reply.status(err.status).send(errorBody(err));
    if (err instanceof EngramError) return reply.status(400).send(errorBody(new ApiError(400, err.message)));
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    const e = status === 500 ? new ApiError(500, `internal error: ${err.message}`, 'server_error') : new ApiError(status, err.message, 'invalid_request_error', null, err.code ?? null);
    return reply.status(status).send(errorBody(e));
  });
  app.setNotFoundHandler((req, reply) => reply.status(404).send(errorBody(new ApiError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'invalid_request_error', null, 'not_found'))));
  app.addHook('onRequest', async () => {
    if (closing) throw new ApiError(503, 'the server is shutting down', 'server_error');
  });

  app.get('/v1/models', async () => ({ object: 'list', data: [{ id: o.name, object: 'model', created, owned_by: 'engram' }] }));

  /** the checks every generation request passes: model name, prompt and token limits, memory */
  const plan = (b: CompletionBody | ChatBody, prompt: string, extraStops: string[], defaultMax: number | null) => {
    if (b.model !== o.name) throw new ApiError(404, `the model '${b.model}' does not exist; this server serves '${o.name}'`, 'invalid_request_error', 'model', 'model_not_found');
    const ids = Array.from(tok.encode(prompt));
    if (ids.length === 0) throw new ApiError(400, 'the prompt is empty', 'invalid_request_error', 'prompt');
    if (ids.length > maxPrompt) throw new ApiError(400, `the prompt has ${ids.length} tokens; this server takes at most ${maxPrompt}`, 'invalid_request_error', 'prompt', 'context_length_exceeded');
    const asked = ('max_completion_tokens' in b ? b.max_completion_tokens : null) ?? b.max_tokens ?? defaultMax ?? context - ids.length;
    if (asked > maxTokens) throw new ApiError(400, `max_tokens is ${asked}; this server allows at most ${maxTokens}`, 'invalid_request_error', 'max_tokens');
    if (ids.length + asked > context) throw new ApiError(400, `the prompt's ${ids.length} tokens and max_tokens ${asked} pass the context of ${context} tokens`, 'invalid_request_error', 'max_tokens', 'context_length_exceeded');
    const memory = b.memory ?? memoryDefault;
    if (memory && !engine.hasMemory) throw new ApiError(400, 'memory was asked for, but this server has no memory bank (start it with --memory-bank)', 'invalid_request_error', 'memory');
    const stop = [...(typeof b.stop === 'string' ? [b.stop] : (b.stop ?? [])), ...extraStops];
    return { ids, maxNew: asked, memory, stop };
  };

  const generateRoute = (kind: 'text' | 'chat') => async (req: FastifyRequest, reply: FastifyReply) => {
    const b = kind === 'text' ? parse(CompletionBody, req.body) : parse(ChatBody, req.body);
    const { prompt, stop } = kind === 'text' ? { prompt: Array.isArray((b as CompletionBody).prompt) ? (b as CompletionBody).prompt[0]! : ((b as CompletionBody).prompt as string), stop: [] } : renderChat((b as ChatBody).messages, template);
    const p = plan(b, prompt, stop, kind === 'text' ? 16 : null);
    const id = `${kind === 'text' ? 'cmpl' : 'chatcmpl'}-${Date.now().toString(36)}${(seq++).toString(36)}`;
    const object = kind === 'text' ? 'text_completion' : 'chat.completion';
    const ac = new AbortController();
    let done = false;
    reply.raw.on('close', () => !done && ac.abort());
    const request = { prompt: p.ids, maxNew: p.maxNew, temperature: b.temperature ?? 1, topP: b.top_p ?? 1, seed: b.seed ?? seq, stopIds, stop: p.stop, memory: p.memory, signal: ac.signal };
    const usage = (r: EngineResult) => ({ prompt_tokens: r.promptTokens, completion_tokens: r.ids.length, total_tokens: r.promptTokens + r.ids.length });
    const extra = (r: EngineResult) => (p.memory ? { engram: { chunks: r.chunks.map(chunkJson) } } : {});
    if (!b.stream) {
      const r = await engine.submit(request);
      done = true;
      const finish = r.finish === 'stop' ? 'stop' : 'length';
      const choice = kind === 'text' ? { index: 0, text: r.text, logprobs: null, finish_reason: finish } : { index: 0, message: { role: 'assistant', content: r.text, refusal: null }, logprobs: null, finish_reason: finish };
      return { id, object, created: Math.floor(Date.now() / 1000), model: o.name, choices: [choice], usage: usage(r), ...extra(r) };
    }
    // server-sent events: a chunk per delta of text, then the finish, [DONE]
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const chunkObject = kind === 'text' ? 'text_completion' : 'chat.completion.chunk';
    const t = Math.floor(Date.now() / 1000);
    const send = (choice: object, more: object = {}) => raw.write(`data: ${JSON.stringify({ id, object: chunkObject, created: t, model: o.name, choices: [choice], ...more })}\n\n`);
    const delta = (text: string, finish: string | null = null) => (kind === 'text' ? { index: 0, text, logprobs: null, finish_reason: finish } : { index: 0, delta: finish ? {} : { content: text }, logprobs: null, finish_reason: finish });
    if (kind === 'chat') send({ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
    const deltas = new TextDeltas(p.stop);
    const out: number[] = [];
    try {
      const r = await engine.submit({
        ...request,
        onToken: (tokenId) => {
          out.push(tokenId);
          if (stopIds.includes(tokenId)) return;
          const d = deltas.next(tok.decode(out));
          if (d) send(delta(d));
        },
      });
      done = true;
      if (r.finish === 'cancelled') return void raw.end();
      const rest = deltas.finish(r.text);
      if (rest) send(delta(rest));
      send(delta('', r.finish === 'stop' ? 'stop' : 'length'), extra(r));
      if (b.stream_options?.include_usage) raw.write(`data: ${JSON.stringify({ id, object: chunkObject, created: t, model: o.name, choices: [], usage: usage(r) })}\n\n`);
      raw.write('data: [DONE]\n\n');
    } catch (e) {
      done = true;
      const err = e instanceof ApiError ? e : new ApiError(500, `internal error: ${(e as Error).message}`, 'server_error');
      raw.write(`data: ${JSON.stringify(errorBody(err))}\n\n`);
    }
    raw.end();
  };
  app.post('/v1/completions', generateRoute('text'));
  app.post('/v1/chat/completions', generateRoute('chat'));

  // the explicit-memory bank
  const bank = () => {
    if (!o.bank) throw new ApiError(404, 'this server has no memory bank (start it with --memory-bank)', 'invalid_request_error', null, 'no_memory_bank');
    return o.bank;
  };
  app.get('/v1/memory', async (req) => {
    const q = parse(MemoryListQuery, req.query);
    const b = bank();
    return { object: 'list', data: await b.list(q), total: await b.count() };
  });
  app.get('/v1/memory/search', async (req) => {
    const q = parse(MemorySearchQuery, req.query);
    return { object: 'list', data: await bank().search(q.q, { k: q.k }) };
  });
  app.post('/v1/memory', async (req, reply) => {
    const body = parse(MemoryAddBody, req.body);
    const b = bank();
    const refs = [{ text: body.text, where: 'text', ...(body.id !== undefined ? { id: body.id } : {}) }];
    const w = { gpu: o.gpu, model: o.model, tok };
    const lineOf = checkReferences(w, refs, b.manifest.tokens);
    await checkNewIds(lineOf, b);
    const [added] = await engine.exclusive(() => writeAndAdd(w, b, refs, { batch: 1, deferIndex: false }));
    return reply.status(201).send({ id: added, object: 'memory.reference', text: body.text });
  });
  app.delete('/v1/memory/:id', async (req) => {
    const { id } = req.params as { id: string };
    const b = bank();
    if ((await b.get([id])).length === 0) throw new ApiError(404, `no reference '${id}' in the bank`, 'invalid_request_error', 'id', 'not_found');
    await b.remove([id]);
    return { id, object: 'memory.reference', deleted: true };
  });

  app.addHook('preClose', async () => {
    closing = true;
  });
  return app;
}

/** a chunk's retrieval as JSON */
function chunkJson(c: ChunkInfo) {
  return { start: c.start, end: c.end, query: c.query, retrieved: c.retrieved.map((h) => ({ id: h.id, text: h.text, score: h.score })) };
}

/**
 * stops the server gracefully: no new requests (503) or connections, the running ones finish,
 * then the engine stops
 */
export async function shutdown(app: FastifyInstance, engine: Engine): Promise<void> {
  await app.close();
  await engine.close();
}
