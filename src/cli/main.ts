// the engram command line: `engram <command> [options]`.

import { parseArgs } from 'node:util';
import { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';

const HELP = `usage: engram <command> [options]

commands:
  info       the WebGPU adapter engram will use: name, features, key limits
  data       build the corpus, train a tokenizer, write token files and held-out questions
             --out data  --max-mb 4  --vocab 2048  --seed 0  --practice 0 (share of facts also
             trained in a practice question form; the held-out question templates never are)
             --reading 0 (documents of invented facts' statements and questions about them, in
             train only: they teach reading a fact out of the context, which retrieved text and
             Memory³ memories need; a small model learns it late, after thousands of steps)
             --reading-group 1 (a reading document's 6 facts in groups of this many of one
             relation, 1, 2, 3 or 6: a question's subject, not its relation, then finds its statement)
  train      train a model (or resume the run in --out)
             --data data  --out runs/tiny  --config tiny|base|<file.json>  --steps 300  --batch 8
             --seq 128  --accum 1  --lr 3e-3  --warmup 30  --eval-every 50  --save-every 100  --seed 0
             --init <checkpoint>: start from a trained model's weights (a new optimizer)
             --memory-kb <refs.txt>: Memory³'s second stage: every 64-token chunk reads explicit
             memories of references from the file (one per line; --memory-window 5 per chunk,
             --memory-tokens 8 per head), encoded on the fly; --seq a multiple of 64;
             --memory-own 1: each chunk reads its own best --memory-window references (as at
             inference) instead of its own and the previous chunks' one each (the paper's);
             --memory-gradient 1|0: gradients also flow through the references' encoding (keeps
             their forward for the backward); default 1 for a dense model, 0 with Memory+ blocks
             (0: the paper's training, memories constants of the step)
             --value-gpus N: shard the memory value table by columns over N GPUs of this host (PCI
             order, or ENGRAM_GPU_BUSES=0000:41:00.0,...), the model on the first; dim a multiple of
             N. 1 (default): one GPU. --value-gpus-shared: N devices on one adapter (to try the
             sharding on one GPU; no speed-up). new runs, --init and resuming alike; the checkpoints
             are one GPU's, resumable with any N. --value-exchange bf16: the shards' column blocks
             travel as bf16 (half their bytes; y and its gradient rounded to bf16), default f32
  generate   continue a prompt, streaming: --model runs/tiny --prompt "..." --max-new 64
             --temperature 0.8 --top-p 0.95 --top-k 0 --seed 0 --stop "<string>"
             --memory <bank>: read Memory³ explicit memories from the bank while generating (every
             64-token chunk retrieves 5 references); what each chunk retrieved goes to stderr
  ask        held-out factual questions against a model: --model runs/tiny --data data --n 10
  eval facts held-out factual questions from the knowledge bases, greedy answers scored by exact
             match and token F1, per relation: --checkpoint runs/tiny  --relations capital,currency
             --n <questions per relation, evenly spaced; default all>  --out <results.json>
  memory     Memory³ explicit memories: a bank of references and their encoded memories, tied to one
             model (a bank built for another model is refused). --bank defaults to <model>.memory
    build    --model runs/tiny --bank <folder> --from refs.txt|refs.jsonl  --batch 32  --layers 0,1
             (default: the first half of the blocks)  --tokens 8 (kept per KV head)  --dtype bf16|f32|pq
             (pq: product-quantised, codebooks learned from the references; --vq-bytes per vector)
             a reference per non-empty line (.txt) or per {"text": ..., "id": ...} line (.jsonl);
             creates the bank if missing (an existing one keeps its layers/tokens/dtype; others are
             refused). every reference is checked first: one with fewer than --tokens tokens (or
             an id twice, or one already there) fails naming its line, and nothing is added
    add      --model runs/tiny --bank <folder> --text "..." [--id <id>]: one reference; prints its id
    remove   --bank <folder> --id <id>[,<id>...]: fails, removing nothing, if an id is not there
    list     --bank <folder> --offset 0 --limit 20: id and text, in insertion order
    search   --bank <folder> --query "..." --k 5: id, BM25 score and text, best first
    export   --bank <folder> --out bank.engram --limit <n>: the bank (its first n references) as one
             checksummed file, for the browser demo (web/; up to 10,000 references without --limit)
  serve      an OpenAI-compatible HTTP server: --model runs/tiny  --host 127.0.0.1  --port 8080
             --slots 32 (requests decoded together)  --name <model id; default the folder's name>
             --memory-bank <folder> (Memory³ bank: /v1/memory add/remove/list/search, and reading)
             --memory on|off (read memories unless a request says; default on with a bank)
             --chat-template qa|plain  --max-prompt <tokens>  --max-tokens <tokens>
             GET /v1/models, POST /v1/completions and /v1/chat/completions ("stream": true for
             SSE), /v1/memory; Ctrl-C (SIGINT) or SIGTERM finishes the running requests and stops
  chat       a terminal chat: --model runs/tiny  --memory-bank <folder>  --chat-template qa|plain
             --max-tokens 64  --temperature 0.7  --seed 0; /memory on|off, /refs on|off, /reset, /quit
  demo       all of it in one go: builds a fact drill, trains a small memory model for a few
             minutes, asks it questions; --gpu for a bigger model on a GPU
             --out demo  --gpu  --steps <n>  --max-minutes 8  --seed 0
  help       this text
`;

async function info(): Promise<void> {
  const gpu = await Gpu.create();
  try {
    const f = gpu.features;
    const l = gpu.limits;
    console.log(`adapter: ${gpu.adapterName}`);
    console.log(`features: shader-f16=${f.f16} subgroups=${f.subgroups} timestamp-query=${f.timestamps} subgroup-matrix=${f.subgroupMatrix.length} configs`);
    for (const c of f.subgroupMatrix) console.log(`  subgroup matrix ${c.componentType}->${c.resultComponentType} ${c.M}x${c.N}x${c.K}`);
    for (const k of ['maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup']) {
      console.log(`${k}: ${l[k]}`);
    }
  } finally {
    gpu.destroy();
  }
}

const [cmd = 'help', ...rest] = process.argv.slice(2);
/** the command's options: `spec` those with a value (and its default), `flags` those without (true when given) */
const opt = (spec: Record<string, string>, flags: readonly string[] = []) => {
  const options = { ...Object.fromEntries(Object.keys(spec).map((k) => [k, { type: 'string' as const }])), ...Object.fromEntries(flags.map((k) => [k, { type: 'boolean' as const }])) };
  const { values } = parseArgs({ args: rest, options, strict: true });
  const v = { ...spec, ...values } as Record<string, string>;
  const num = (k: string) => {
    const x = Number(v[k]);
    if (!Number.isFinite(x)) throw new Error(`--${k}: expected a number, got '${v[k]}'`);
    return x;
  };
  return { str: (k: string) => v[k]!, num, flag: (k: string) => (values as Record<string, unknown>)[k] === true };
};

/** runs a command whose engram errors say what is wrong: their message (prefixed `engram <what>: `), no stack trace, exit status 1 */
async function plainErrors(what: string, run: () => Promise<unknown>): Promise<void> {
  try {
    await run();
  } catch (e) {
    if (!(e instanceof EngramError)) throw e;
    console.error(e.message.startsWith('engram ') ? e.message : `engram ${what}: ${e.message}`);
    process.exit(1);
  }
}
switch (cmd) {
  case 'info':
    await info();
    break;
  case 'data': {
    const { dataCommand } = await import('./commands.ts');
    const o = opt({ out: 'data', 'max-mb': '4', vocab: '2048', seed: '0', practice: '0', reading: '0', 'reading-group': '1' });
    await dataCommand({ out: o.str('out'), maxMb: o.num('max-mb'), vocab: o.num('vocab'), seed: o.num('seed'), practice: o.num('practice'), reading: o.num('reading'), readingGroup: o.num('reading-group') });
    break;
  }
  case 'train': {
    const { trainCommand } = await import('./commands.ts');
    const o = opt(
      { data: 'data', out: 'runs/tiny', config: 'tiny', steps: '300', batch: '8', seq: '128', accum: '1', lr: '3e-3', warmup: '30', 'eval-every': '50', 'save-every': '100', seed: '0', init: '', 'memory-kb': '', 'memory-window': '5', 'memory-tokens': '8', 'memory-own': '0', 'memory-gradient': '', 'value-gpus': '1', 'value-exchange': 'f32' },
      ['value-gpus-shared'],
    );
    await plainErrors('train', () => trainCommand({
      data: o.str('data'),
      out: o.str('out'),
      config: o.str('config'),
      steps: o.num('steps'),
      batch: o.num('batch'),
      seq: o.num('seq'),
      accum: o.num('accum'),
      lr: o.num('lr'),
      warmup: o.num('warmup'),
      evalEvery: o.num('eval-every'),
      saveEvery: o.num('save-every'),
      seed: o.num('seed'),
      ...(o.str('init') ? { init: o.str('init') } : {}),
      ...(o.str('memory-kb') ? { memoryKb: o.str('memory-kb'), memoryWindow: o.num('memory-window'), memoryTokens: o.num('memory-tokens'), memoryOwn: o.num('memory-own') !== 0, ...(o.str('memory-gradient') !== '' ? { memoryGradient: o.num('memory-gradient') !== 0 } : {}) } : {}),
      valueGpus: o.num('value-gpus'),
      valueGpusShared: o.flag('value-gpus-shared'),
      valueExchange: o.str('value-exchange'),
    }));
    break;
  }
  case 'generate': {
    const { generateCommand } = await import('./commands.ts');
    const o = opt({ model: 'runs/tiny', prompt: '', 'max-new': '64', temperature: '0.8', 'top-p': '0.95', 'top-k': '0', seed: '0', stop: '', memory: '' });
    const a = {
      model: o.str('model'),
      prompt: o.str('prompt'),
      maxNew: o.num('max-new'),
      temperature: o.num('temperature'),
      topP: o.num('top-p'),
      topK: o.num('top-k'),
      seed: o.num('seed'),
      stop: o.str('stop'),
    };
    if (o.str('memory') === '') await generateCommand(a);
    else {
      const { generateWithMemoryCommand } = await import('./memory.ts');
      await generateWithMemoryCommand({ ...a, memory: o.str('memory') });
    }
    break;
  }
  case 'serve': {
    const { serveCommand } = await import('./serve.ts');
    const o = opt({ model: 'runs/tiny', host: '127.0.0.1', port: '8080', slots: '32', name: '', 'memory-bank': '', memory: '', 'chat-template': 'qa', 'max-prompt': '0', 'max-tokens': '0' });
    const memory = o.str('memory');
    if (!['', 'on', 'off'].includes(memory)) throw new Error(`--memory: expected on or off, got '${memory}'`);
    const template = o.str('chat-template');
    if (template !== 'qa' && template !== 'plain') throw new Error(`--chat-template: expected qa or plain, got '${template}'`);
    await serveCommand({
      model: o.str('model'),
      host: o.str('host'),
      port: o.num('port'),
      slots: o.num('slots'),
      chatTemplate: template,
      ...(o.str('name') ? { name: o.str('name') } : {}),
      ...(o.str('memory-bank') ? { bank: o.str('memory-bank') } : {}),
      ...(memory ? { memory: memory === 'on' } : {}),
      ...(o.num('max-prompt') > 0 ? { maxPromptTokens: o.num('max-prompt') } : {}),
      ...(o.num('max-tokens') > 0 ? { maxTokens: o.num('max-tokens') } : {}),
    });
    break;
  }
  case 'chat': {
    const { chatCommand } = await import('./serve.ts');
    const o = opt({ model: 'runs/tiny', 'memory-bank': '', 'chat-template': 'qa', 'max-tokens': '64', temperature: '0.7', seed: '0' });
    const template = o.str('chat-template');
    if (template !== 'qa' && template !== 'plain') throw new Error(`--chat-template: expected qa or plain, got '${template}'`);
    await chatCommand({ model: o.str('model'), chatTemplate: template, maxTokens: o.num('max-tokens'), temperature: o.num('temperature'), seed: o.num('seed'), ...(o.str('memory-bank') ? { bank: o.str('memory-bank') } : {}) });
    break;
  }
  case 'ask': {
    const { askCommand } = await import('./commands.ts');
    const o = opt({ model: 'runs/tiny', data: 'data', n: '10' });
    await askCommand({ model: o.str('model'), data: o.str('data'), n: o.num('n') });
    break;
  }
  case 'eval': {
    const [what, ...args] = rest;
    if (what !== 'facts') {
      console.error(`engram eval: unknown evaluation '${what ?? ''}' (known: facts)\n\n${HELP}`);
      process.exit(2);
    }
    const { values } = parseArgs({ args, options: { checkpoint: { type: 'string' }, relations: { type: 'string' }, n: { type: 'string' }, out: { type: 'string' } }, strict: true });
    if (values.checkpoint === undefined) throw new Error('engram eval facts: --checkpoint <dir> is required');
    let n: number | undefined;
    if (values.n !== undefined) {
      n = Number(values.n);
      if (!Number.isInteger(n) || n <= 0) throw new Error(`--n: expected a positive integer, got '${values.n}'`);
    }
    const { openModel } = await import('./commands.ts');
    const { evalFactsCommand } = await import('../eval/facts.ts');
    await evalFactsCommand(
      {
        checkpoint: values.checkpoint,
        ...(values.relations !== undefined ? { relations: values.relations.split(',').map((r) => r.trim()).filter((r) => r !== '') } : {}),
        ...(n !== undefined ? { n } : {}),
        ...(values.out !== undefined ? { out: values.out } : {}),
      },
      openModel,
    );
    break;
  }
  case 'memory': {
    const [sub = '', ...args] = rest;
    const flags: Record<string, string[]> = {
      build: ['model', 'bank', 'from', 'batch', 'layers', 'tokens', 'dtype', 'vq-bytes'],
      add: ['model', 'bank', 'text', 'id', 'layers', 'tokens', 'dtype'],
      remove: ['model', 'bank', 'id'],
      list: ['model', 'bank', 'offset', 'limit'],
      search: ['model', 'bank', 'query', 'k'],
      export: ['model', 'bank', 'out', 'limit'],
    };
    const known = flags[sub];
    if (!known) {
      console.error(`engram memory: unknown subcommand '${sub}' (known: ${Object.keys(flags).join(', ')})\n\n${HELP}`);
      process.exit(2);
    }
    const { values: v } = parseArgs({ args, options: Object.fromEntries(known.map((k) => [k, { type: 'string' as const }])), strict: true });
    const int = (k: string, min: number): number | undefined => {
      const s = v[k];
      if (s === undefined) return undefined;
      const x = Number(s);
      if (!Number.isInteger(x) || x < min) throw new Error(`--${k}: expected an integer >= ${min}, got '${s}'`);
      return x;
    };
    const need = (k: string): string => {
      const s = v[k];
      if (s === undefined || s === '') throw new Error(`engram memory ${sub}: --${k} is required`);
      return s;
    };
    const m = await import('./memory.ts');
    const where = { ...(v.model !== undefined ? { model: v.model } : {}), ...(v.bank !== undefined ? { bank: v.bank } : {}) };
    const dims = {
      ...(v.layers !== undefined ? { layers: m.parseLayers(v.layers) } : {}),
      ...(v.tokens !== undefined ? { tokens: int('tokens', 1)! } : {}),
      ...(v.dtype !== undefined ? { dtype: m.parseDtype(v.dtype) } : {}),
      ...(v['vq-bytes'] !== undefined ? { vqBytes: int('vq-bytes', 1)! } : {}),
    };
    await plainErrors(`memory ${sub}`, async () => {
      if (sub === 'export') await m.memoryExportCommand({ ...where, out: need('out'), ...(v.limit !== undefined ? { limit: int('limit', 0)! } : {}) });
      else if (sub === 'build') await m.memoryBuildCommand({ ...where, ...dims, model: need('model'), from: need('from'), ...(v.batch !== undefined ? { batch: int('batch', 1)! } : {}) });
      else if (sub === 'add') await m.memoryAddCommand({ ...where, ...dims, model: need('model'), text: need('text'), ...(v.id !== undefined ? { id: v.id } : {}) });
      else if (sub === 'remove') await m.memoryRemoveCommand({ ...where, ids: need('id').split(',').map((id) => id.trim()).filter((id) => id !== '') });
      else if (sub === 'list') await m.memoryListCommand({ ...where, offset: int('offset', 0) ?? 0, limit: int('limit', 0) ?? 20 });
      else await m.memorySearchCommand({ ...where, query: need('query'), k: int('k', 1) ?? 5 });
    });
    break;
  }
  case 'demo': {
    const { demoCommand } = await import('./demo.ts');
    const { values } = parseArgs({ args: rest, options: { out: { type: 'string' }, gpu: { type: 'boolean' }, steps: { type: 'string' }, 'max-minutes': { type: 'string' }, seed: { type: 'string' } }, strict: true });
    const num = (k: string, v: string) => {
      const x = Number(v);
      if (!Number.isFinite(x) || x < 0) throw new Error(`--${k}: expected a non-negative number, got '${v}'`);
      return x;
    };
    await demoCommand({
      out: values.out ?? 'demo',
      gpu: values.gpu ?? false,
      steps: values.steps !== undefined ? num('steps', values.steps) : null,
      maxMinutes: num('max-minutes', values['max-minutes'] ?? '8'),
      seed: num('seed', values.seed ?? '0'),
    });
    break;
  }
  case 'help':
  case '--help':
  case '-h':
    console.log(HELP);
    break;
  default:
    console.error(`engram: unknown command '${cmd}'\n\n${HELP}`);
    process.exit(2);
}
