// suite `tokenizer`: training, encoding and decoding speed of the byte-level BPE (src/data/tokenizer.ts)
// on real text, on the CPU (the result file names the CPU, not the GPU adapter).
//
// text: buildCorpus({ maxBytes: 8 MiB, include: wordnet, brown, facts, valFraction: 0, seed: 1 }) (GCIDE left
// out so that the text is the same whether or not dict-gcide is installed); its documents joined by
// DOC_SEPARATOR into one file, as `engram data` writes train.txt. `--quick`: 512 KiB of the same.
// vocab sizes: 2048 (`engram data`'s default) and 30000. Not 32000: the `tokenizers` binding trains at its
// fixed 30,000 and trainTokenizer truncates, so a vocab above ~30,000 (the exact bound depends on the corpus)
// is out of range. `--quick` uses 2048 and 4096 (a small corpus learns fewer tokens).
// metrics, for each vocab V (one special token, <|endoftext|>, as `engram data` trains):
//   tokenizer_train_s_V            wall seconds of trainTokenizer on the file (training itself is at 30,000
//                                  whatever V: the two differ only by the run-to-run spread)
//   tokenizer_encode_first_MBps_V  Tokenizer.encode over every document, one call per document, with a fresh
//                                  Tokenizer: its piece cache empty and the JS not yet optimized. what
//                                  `engram data` sees, since it encodes each document once
//   tokenizer_encode_MBps_V        the same, median of 5 passes after that first (warm-up) pass
//   tokenizer_decode_MBps_V        Tokenizer.decode of each document's ids, median of 5 passes after a warm-up
//   tokenizer_bytes_per_token_V    UTF-8 bytes of the documents / tokens
// MB/s is 10^6 bytes of UTF-8 input (decode: output) per second of wall clock, separators not counted.
// guard: decode(encode(doc)) === doc for every document at every V; the suite throws (and writes no result
// file) if one differs.
// notes: the corpus (documents per source, bytes), the CPU's core count and Node's version.

import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCorpus, writeCorpus } from '../../src/data/corpus.ts';
import { Tokenizer, trainTokenizer } from '../../src/data/tokenizer.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { median } from '../lib.ts';
import type { SuiteOutput } from '../run.ts';

const EOT = '<|endoftext|>';
const PASSES = 5;

/** 'AMD EPYC (2 cores)': the CPU the figures belong to */
export function cpuName(): string {
  const cs = cpus();
  const model = (cs[0]?.model ?? 'unknown CPU').trim().replace(/\s+/g, ' ');
  return `${model} (${cs.length} core${cs.length === 1 ? '' : 's'})`;
}

function seconds<T>(f: () => T): [T, number] {
  const t0 = performance.now();
  const r = f();
  return [r, (performance.now() - t0) / 1000];
}

/** the ids of each document: one encode call per document, as `engram data` does */
const encodeAll = (tok: Tokenizer, docs: readonly string[]): Uint32Array[] => docs.map((d) => tok.encode(d));

/** decode(encode(doc)) === doc for every document, or a loud failure naming the first that differs */
function checkRoundTrip(tok: Tokenizer, V: number, docs: readonly string[], ids: readonly Uint32Array[]): void {
  let bad = 0;
  let first = -1;
  docs.forEach((d, i) => {
    if (tok.decode(ids[i]!) !== d) {
      bad++;
      if (first < 0) first = i;
    }
  });
  if (bad > 0) {
    const d = docs[first]!;
    const back = tok.decode(ids[first]!);
    let at = 0;
    while (at < d.length && d[at] === back[at]) at++;
    throw new Error(
      `tokenizer suite: decode(encode(doc)) !== doc for ${bad} of ${docs.length} documents at vocab ${V}; the first, ` +
        `document ${first}, differs at char ${at}: ${JSON.stringify(d.slice(Math.max(0, at - 20), at + 20))} came back as ` +
        `${JSON.stringify(back.slice(Math.max(0, at - 20), at + 20))}`,
    );
  }
}

async function measure(file: string, V: number, docs: readonly string[], bytes: number, out: Record<string, number>): Promise<void> {
  const t0 = performance.now();
  const json = await trainTokenizer([file], { vocabSize: V, special: [EOT] });
  out[`tokenizer_train_s_${V}`] = (performance.now() - t0) / 1000;
  const tok = await Tokenizer.fromJson(json);
  if (tok.vocabSize !== V) throw new Error(`tokenizer suite: trained vocab ${tok.vocabSize}, asked for ${V}`);
  const mb = bytes / 1e6;

  const [ids, first] = seconds(() => encodeAll(tok, docs));
  out[`tokenizer_encode_first_MBps_${V}`] = mb / first;
  const enc: number[] = [];
  for (let p = 0; p < PASSES; p++) enc.push(seconds(() => encodeAll(tok, docs))[1]);
  out[`tokenizer_encode_MBps_${V}`] = mb / median(enc);

  checkRoundTrip(tok, V, docs, ids); // also the decode warm-up pass
  const dec: number[] = [];
  for (let p = 0; p < PASSES; p++) dec.push(seconds(() => ids.map((x) => tok.decode(x)))[1]);
  out[`tokenizer_decode_MBps_${V}`] = mb / median(dec);
  out[`tokenizer_bytes_per_token_${V}`] = bytes / ids.reduce((n, x) => n + x.length, 0);
  console.log(
    `V=${V}: train ${out[`tokenizer_train_s_${V}`]!.toFixed(1)} s, encode ${(mb / first).toFixed(1)} MB/s first pass, ` +
      `${out[`tokenizer_encode_MBps_${V}`]!.toFixed(1)} MB/s warm, decode ${out[`tokenizer_decode_MBps_${V}`]!.toFixed(1)} MB/s; round trip ok`,
  );
}

export async function run(_gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const maxBytes = quick ? 2 ** 19 : 8 * 2 ** 20;
  const vocabs = quick ? [2048, 4096] : [2048, 30000];
  const corpus = buildCorpus({ maxBytes, include: ['wordnet', 'brown', 'facts'], valFraction: 0, seed: 1 });
  const docs = [...corpus.train, ...corpus.val];
  const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
  const dir = mkdtempSync(join(tmpdir(), 'engram-bench-tok-'));
  const results: Record<string, number> = {};
  try {
    const { train } = await writeCorpus(dir, corpus);
    console.log(`corpus: ${docs.length} documents, ${(bytes / 1e6).toFixed(2)} MB`);
    for (const V of vocabs) await measure(train, V, docs, bytes, results);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const notes: Record<string, string> = {
    corpus:
      `${docs.length} documents (${Object.entries(corpus.counts).map(([k, v]) => `${k} ${v}`).join(', ')}), ` +
      `${(bytes / 1e6).toFixed(2)} MB UTF-8; trained on all of it, encoded and decoded one document per call`,
    timing: `encode/decode: median of ${PASSES} passes after one warm-up pass (encode_first: that first pass, fresh Tokenizer)`,
    runtime: `Node ${process.version}, ${cpus().length} logical CPUs; encoding is single-threaded`,
  };
  if (quick) notes['quick'] = 'smoke run: 512 KiB of text, vocab 2048 and 4096; not the suite\'s metrics';
  return { results, notes, device: cpuName() };
}
