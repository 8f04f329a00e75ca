// the demo page: a prompt, a Generate button and a memory switch; the output as it streams; what
// each chunk retrieved from the bank; and, per generated token, the Memory+ slots that fired.
// the model runs in a module worker (worker.ts). where the files come from: query parameters,
// resolved against the page's address:
//   model      the checkpoint folder's URL, ending in '/' (default 'model/'): config.json, model.safetensors
//   tokenizer  tokenizer.json (default: the one in the checkpoint folder)
//   bank       a bank export, memory3/export.ts (default 'bank.engram')
//   prompt, maxNew, temperature (default 0: greedy), seed, memory (0: off) preset the controls.
// document.body.dataset.state follows the page: loading, ready, generating, done, error.

import type { ChunkView, FromWorker, SlotRead, ToWorker } from './messages.ts';

const params = new URLSearchParams(location.search);
const at = (name: string, fallback: string): string => new URL(params.get(name) ?? fallback, location.href).href;
const modelUrl = at('model', 'model/');
const files = { model: modelUrl, tokenizer: at('tokenizer', new URL('tokenizer.json', modelUrl).href), bank: at('bank', 'bank.engram') };
const temperature = Number(params.get('temperature') ?? 0);
const seed = Number(params.get('seed') ?? 0);

const $ = <T extends HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e as T;
};
const ui = {
  status: $('status'),
  error: $('error'),
  prompt: $<HTMLTextAreaElement>('prompt'),
  memory: $<HTMLInputElement>('memory'),
  maxNew: $<HTMLInputElement>('max-new'),
  generate: $<HTMLButtonElement>('generate'),
  promptEcho: $('prompt-echo'),
  generated: $('generated'),
  references: $('references'),
  slots: $('slots').querySelector('tbody')!,
};
ui.prompt.value = params.get('prompt') ?? 'The river Zorblat';
ui.maxNew.value = params.get('maxNew') ?? ui.maxNew.value;
if (params.get('memory') === '0') ui.memory.checked = false;

let ready = '';
const setState = (state: 'loading' | 'ready' | 'generating' | 'done' | 'error'): void => {
  document.body.dataset['state'] = state;
  ui.generate.disabled = state === 'loading' || state === 'generating' || (state === 'error' && !ready);
};

/** an element with text (never HTML: references and tokens are data) */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, text = '', cls = ''): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function showChunk(c: ChunkView): void {
  if (ui.references.querySelector('.muted')) ui.references.replaceChildren();
  const li = el('li', '', 'chunk');
  li.append(el('div', c.query ? `tokens ${c.start}–${c.end}, searched with “${c.query.trim()}”` : `tokens ${c.start}–${c.end}, the previous chunk's references`, 'query'));
  const ol = el('ol');
  if (c.retrieved.length === 0) ol.append(el('li', 'nothing matched', 'muted'));
  for (const r of c.retrieved) {
    const item = el('li', '', 'reference');
    item.dataset['id'] = r.id;
    item.append(el('span', `${r.text} `), el('span', `(${r.id}, BM25 ${r.score.toFixed(2)})`, 'score'));
    ol.append(item);
  }
  li.append(ol);
  ui.references.append(li);
}

function showToken(index: number, id: number, piece: string, slots: SlotRead[]): void {
  const tr = el('tr');
  tr.dataset['id'] = String(id);
  const cell = el('td');
  if (slots.length === 0) cell.append(el('span', 'no Memory+ block', 'muted'));
  for (const s of slots) {
    const block = el('div');
    block.append(el('span', `block ${s.layer}: `, 'muted'));
    s.heads.forEach((h, i) => {
      const head = el('span', `h${i} ` + h.slots.map((slot, j) => `${slot} (${h.weights[j]!.toFixed(2)})`).join(' '), 'slot');
      block.append(head);
    });
    cell.append(block);
  }
  tr.append(el('td', String(index)), el('td', JSON.stringify(piece).slice(1, -1), 'token'), cell);
  ui.slots.append(tr);
}

const worker = new Worker(new URL('./worker.ts', import.meta.url), { type: 'module' });
const send = (m: ToWorker): void => worker.postMessage(m);

worker.onmessage = (e: MessageEvent<FromWorker>) => {
  const m = e.data;
  switch (m.type) {
    case 'status':
      ui.status.textContent = m.text;
      break;
    case 'ready':
      ready = `WebGPU adapter: ${m.adapter}${m.cpu ? ' (a CPU adapter: slow)' : ''} · model: ${m.model}, Memory+ at blocks [${m.memoryLayers.join(', ')}] · bank: ${m.bank.references} references (${m.bank.dtype}, memory blocks [${m.bank.layers.join(', ')}])`;
      ui.status.textContent = ready;
      setState('ready');
      break;
    case 'start':
      ui.status.textContent = `${ready} · generating after ${m.promptTokens} prompt tokens…`;
      break;
    case 'chunk':
      showChunk(m.chunk);
      break;
    case 'token':
      ui.generated.textContent = m.text;
      showToken(m.index, m.id, m.piece, m.slots);
      break;
    case 'done':
      ui.status.textContent = `${ready} · ${m.tokens} tokens in ${m.seconds.toFixed(1)} s`;
      setState('done');
      break;
    case 'error':
      ui.error.textContent = m.message;
      setState('error');
      break;
  }
};
worker.onerror = (e) => {
  ui.error.textContent = `the worker failed: ${e.message || 'see the console'}`;
  setState('error');
};

ui.generate.addEventListener('click', () => {
  ui.error.textContent = '';
  ui.promptEcho.textContent = ui.prompt.value;
  ui.generated.textContent = '';
  ui.references.replaceChildren(el('li', ui.memory.checked ? 'none yet' : 'memory is off', 'muted'));
  ui.slots.replaceChildren();
  setState('generating');
  send({ type: 'generate', prompt: ui.prompt.value, memory: ui.memory.checked, maxNew: Math.max(1, Number(ui.maxNew.value) || 16), temperature, seed });
});

setState('loading');
send({ type: 'load', ...files });
