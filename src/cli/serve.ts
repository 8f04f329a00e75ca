// `engram serve` (the OpenAI-compatible server, serve/server.ts) and `engram chat` (a terminal
// chat over the same engine, in process): opening a checkpoint with its tokenizer and, with
// --memory-bank, the explicit-memory bank built for it (a bank of another model is refused by its
// fingerprint, memory3/bank.ts).
//
// chat: the conversation is rendered by the chat template (serve/openai.ts) and the answer streams
// as it is generated; lines starting with '/' are commands:
//   /memory on|off   read explicit memories or not (on by default with a bank)
//   /refs on|off     show what each answer's chunks retrieved (on by default)
//   /reset           forget the conversation
//   /quit            leave (so does the end of input)
// the oldest turns are dropped when the conversation would not leave room for an answer.

import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { Tokenizer } from '../data/tokenizer.ts';
import { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { oneLine } from '../memory3/add.ts';
import { MemoryBank } from '../memory3/bank.ts';
import { MemoryReader } from '../memory3/read.ts';
import { modelFingerprint } from '../memory3/write.ts';
import { loadModel } from '../model/checkpoint.ts';
import type { Transformer } from '../model/transformer.ts';
import { Engine } from '../serve/engine.ts';
import { renderChat, type ChatBody, type ChatTemplate } from '../serve/openai.ts';
import { buildServer, shutdown } from '../serve/server.ts';
import { TextDeltas } from '../serve/stream.ts';

const EOT = '<|endoftext|>';

export interface OpenedModel {
  gpu: Gpu;
  model: Transformer;
  tok: Tokenizer;
  bank: MemoryBank | null;
  engine: Engine;
  dispose(): Promise<void>;
}

/** the checkpoint, its tokenizer, the bank (when given) and an engine of `slots` rows over them */
export async function openForServing(dir: string, o: { bank?: string; slots?: number; gpu?: Gpu }): Promise<OpenedModel> {
  const gpu = o.gpu ?? (await Gpu.create());
  const { model, files } = await loadModel(gpu, dir);
  const tj = files['tokenizer.json'];
  if (!tj) throw new EngramError(`${dir} has no tokenizer.json: serving needs the model's tokenizer`);
  const tok = await Tokenizer.fromJson(new TextDecoder().decode(tj));
  let bank: MemoryBank | null = null;
  if (o.bank) {
    const m = await MemoryBank.manifestAt(o.bank);
    if (!m) throw new EngramError(`no memory bank at ${o.bank}: build one with \`engram memory build --model ${dir} --bank ${o.bank} --from <references.txt>\``);
    bank = await MemoryBank.open(o.bank, { model: { ...MemoryBank.modelOf(m), fingerprint: modelFingerprint(files) } });
  }
  const engine = await Engine.create(gpu, model, tok, { slots: o.slots ?? 32, ...(bank ? { reader: new MemoryReader(gpu, model, tok, bank) } : {}) });
  return {
    gpu,
    model,
    tok,
    bank,
    engine,
    dispose: async () => {
      await engine.close({ cancel: true });
      bank?.close();
      model.dispose();
      if (!o.gpu) gpu.destroy();
    },
  };
}

export interface ServeArgs {
  model: string;
  bank?: string;
  host: string;
  port: number;
  slots: number;
  name?: string;
  memory?: boolean;
  chatTemplate: ChatTemplate;
  maxPromptTokens?: number;
  maxTokens?: number;
}

/** `engram serve`: serves until SIGINT or SIGTERM, then closes gracefully */
export async function serveCommand(a: ServeArgs): Promise<void> {
  const m = await openForServing(a.model, { ...(a.bank ? { bank: a.bank } : {}), slots: a.slots });
  const name = a.name ?? (a.model.replace(/\/+$/, '').split('/').pop() || 'engram');
  const app = await buildServer({
    gpu: m.gpu,
    model: m.model,
    tok: m.tok,
    engine: m.engine,
    name,
    ...(m.bank ? { bank: m.bank } : {}),
    ...(a.memory !== undefined ? { memory: a.memory } : {}),
    chatTemplate: a.chatTemplate,
    ...(a.maxPromptTokens ? { maxPromptTokens: a.maxPromptTokens } : {}),
    ...(a.maxTokens ? { maxTokens: a.maxTokens } : {}),
  });
  const address = await app.listen({ host: a.host, port: a.port });
  console.error(`engram serve: '${name}' at ${address}/v1 (${a.slots} slots, context ${m.engine.maxContext}${m.bank ? `, memory bank ${a.bank}` : ''}); Ctrl-C stops`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      console.error(`engram serve: ${sig}: finishing the running requests`);
      resolve();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  await shutdown(app, m.engine);
  await m.dispose();
}

export interface ChatArgs {
  model: string;
  bank?: string;
  chatTemplate: ChatTemplate;
  maxTokens: number;
  temperature: number;
  seed: number;
}

/** `engram chat`: a conversation on the terminal (or on the given streams) */
export async function chatCommand(a: ChatArgs, io: { input?: Readable; output?: Writable; gpu?: Gpu } = {}): Promise<void> {
  const out = io.output ?? process.stdout;
  const write = (s: string) => void out.write(s);
  const m = await openForServing(a.model, { ...(a.bank ? { bank: a.bank } : {}), slots: 1, ...(io.gpu ? { gpu: io.gpu } : {}) });
  let memory = !!m.bank;
  let refs = true;
  let history: ChatBody['messages'] = [];
  const eot = m.tok.tokenId(EOT);
  write(`engram chat: ${a.model}${m.bank ? ` with the memory bank ${a.bank} (memory on; /memory off to stop reading it)` : ''}. /quit leaves.\n`);
  const rl = createInterface({ input: io.input ?? process.stdin, terminal: false });
  try {
    write('> ');
    for await (const line of rl) {
      const text = line.trim();
      if (text === '/quit' || text === '/exit') break;
      if (text.startsWith('/')) {
        const [cmd, arg] = text.split(/\s+/);
        if (cmd === '/memory' && (arg === 'on' || arg === 'off')) {
          if (arg === 'on' && !m.bank) write('no memory bank: start engram chat with --memory-bank <folder>\n');
          else memory = arg === 'on';
          write(`memory ${memory ? 'on' : 'off'}\n`);
        } else if (cmd === '/refs' && (arg === 'on' || arg === 'off')) {
          refs = arg === 'on';
          write(`references ${refs ? 'shown' : 'hidden'}\n`);
        } else if (cmd === '/reset') {
          history = [];
          write('conversation cleared\n');
        } else write('commands: /memory on|off, /refs on|off, /reset, /quit\n');
        write('> ');
        continue;
      }
      if (text === '') {
        write('> ');
        continue;
      }
      history.push({ role: 'user', content: text });
      // drop the oldest turns while the prompt leaves less than maxTokens of room
      let r = renderChat(history, a.chatTemplate);
      while (history.length > 1 && m.tok.encode(r.prompt).length + a.maxTokens > m.engine.maxContext) {
        history = history.slice(2);
        r = renderChat(history, a.chatTemplate);
      }
      const prompt = Array.from(m.tok.encode(r.prompt));
      const maxNew = Math.min(a.maxTokens, m.engine.maxContext - prompt.length);
      if (maxNew < 1) {
        write(`that message alone fills the context (${m.engine.maxContext} tokens); say something shorter\n> `);
        history.pop();
        continue;
      }
      const deltas = new TextDeltas(r.stop);
      const ids: number[] = [];
      const res = await m.engine.submit({
        prompt,
        maxNew,
        temperature: a.temperature,
        seed: a.seed,
        stop: r.stop,
        stopIds: eot !== undefined ? [eot] : [],
        memory,
        onToken: (id) => {
          ids.push(id);
          write(deltas.next(m.tok.decode(ids)));
        },
      });
      write(`${deltas.finish(res.text)}\n`);
      history.push({ role: 'assistant', content: res.text.trim() });
      if (memory && refs) {
        for (const c of res.chunks) {
          if (c.retrieved.length === 0) continue;
          write(`  [tokens ${c.start}-${c.end}${c.query ? `, "${oneLine(c.query, 40)}"` : ''}] ${c.retrieved.map((h) => `${h.id}: ${oneLine(h.text, 60)}`).join(' | ')}\n`);
        }
      }
      write('> ');
    }
  } finally {
    rl.close();
    await m.dispose();
  }
}
