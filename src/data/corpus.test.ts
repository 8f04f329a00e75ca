import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, test } from 'node:test';
import { EngramError } from '../gpu/errors.ts';
import { Rng } from '../testing/rng.ts';
import {
  CORPUS_SOURCES,
  type CorpusOptions,
  DOC_SEPARATOR,
  brownText,
  buildCorpus,
  gcideEntry,
  splitDocuments,
  writeCorpus,
} from './corpus.ts';
import { loadFacts, questions, statements } from './facts.ts';

// GCIDE is not installed on every machine: the tests use a path that does not exist, or a tiny dictionary of their own
const NO_GCIDE = '/nonexistent/gcide.dict.dz';
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'engram-corpus-'));
  dirs.push(d);
  return d;
}

const bytes = (docs: string[]) => docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
const full = buildCorpus({ gcidePath: NO_GCIDE });
const all = [...full.train, ...full.val];

test('buildCorpus: every source in full, counts per source, GCIDE skipped with a note when absent', () => {
  assert.ok(full.counts['wordnet']! > 2000, JSON.stringify(full.counts));
  assert.equal(full.counts['brown'], 500);
  assert.ok(full.counts['facts']! > 300);
  assert.equal(full.counts['gcide'], 0);
  assert.equal(full.notes.length, 1);
  assert.match(full.notes[0]!, /gcide: skipped.*nonexistent.*dict-gcide/);
  assert.equal(all.length, Object.values(full.counts).reduce((a, b) => a + b, 0));
  assert.equal(full.bytes, bytes(all));
  assert.ok(full.bytes > 15e6 && full.bytes < 25e6, `${full.bytes} bytes`);
  for (const d of all) {
    assert.ok(d !== '' && d.trim() === d);
    assert.ok(!d.includes('<|endoftext|>'));
  }
});

test('buildCorpus: WordNet glosses, lemma and part of speech first, with examples', () => {
  const wordnet = all.filter((d) => /^[^\n]+ \((noun|verb|adjective|adverb)\): /.test(d));
  assert.ok(wordnet.length >= full.counts['wordnet']! - 1);
  const text = wordnet.join('\n');
  assert.ok(text.includes('\noverlordship (noun): the position of overlord\n'));
  assert.ok(text.includes('peasanthood (noun): the state of being a peasant; "the same homely dress she wore in the days of her peasanthood"'));
  assert.match(text, /\nstimulate, arouse, brace, energize \(verb\): cause to be alert and energetic;/);
  assert.ok(!/_|\(a\)|\(p\)/.test(text.split('\n').map((l) => l.slice(0, l.indexOf(':'))).join('\n')));
  const lines = wordnet[0]!.split('\n');
  assert.equal(lines.length, 50);
});

test('buildCorpus: Brown corpus with tags stripped', () => {
  const brown = all.filter((d) => d.includes('Fulton County Grand Jury') || d.includes('pottery'));
  assert.ok(brown.length >= 2);
  const jury = brown.find((d) => d.startsWith('The Fulton County Grand Jury said Friday'))!;
  assert.ok(jury.startsWith(`The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "no evidence" that any irregularities took place.\n`));
  // no "word/tag" left ("B.t.u./sq. ft." and phonemes like "/l/" are the text's own)
  for (const d of all) assert.ok(!/\w\/(at|nn|nns|in|vbd|np|jj|cc|rb)(\s|$)|\.\/\.|,\/,/.test(d), d.slice(0, 200));
  assert.equal(
    brownText('\n\n\tThe/at jury/nn said/vbd ``/`` yes/rb \'\'/\'\' ,/, and/cc 1-1/2/cd (/( more/ap )/) ./.\n\tNext/ap one/cd ./.\n\n\n\tNew/jj paragraph/nn ;/. ;/. end/nn ./.\n'),
    'The jury said "yes", and 1-1/2 (more). Next one.\nNew paragraph; end.',
  );
});

test('buildCorpus: every fact is in train, in 2-3 phrasings in all', () => {
  const lines = new Set(full.train.flatMap((d) => d.split('\n')));
  const everywhere = new Map<string, number>();
  for (const d of all) for (const l of d.split('\n')) everywhere.set(l, (everywhere.get(l) ?? 0) + 1);
  for (const f of loadFacts()) {
    const says = statements(f, () => 0);
    assert.ok(says.some((s) => lines.has(s)), `${JSON.stringify(f)} not in train`);
    const n = says.filter((s) => everywhere.has(s)).length;
    assert.ok(n >= 2 && n <= 3, `${JSON.stringify(f)}: ${n} phrasings`);
  }
});

test('buildCorpus: practice puts a share of the facts in a practice Q/A form into train, never a held-out question', () => {
  const c = buildCorpus({ include: ['facts'], practice: 0.5, seed: 3 });
  const asked = questions(loadFacts());
  assert.ok(Math.abs(c.practised.length / asked.length - 0.5) < 0.05, `${c.practised.length} of ${asked.length} practised`);
  const train = c.train.join('\n');
  for (const q of c.practised.slice(0, 50)) assert.ok(train.includes(`${q.prompt}${q.answer}`), q.prompt);
  const text = [...c.train, ...c.val].join('\n');
  // every "Q: " in the text, up to the first "\nA:" after it: a held-out prompt in the text would be one of these
  const prompts = new Set(asked.map((q) => q.prompt));
  for (let i = text.indexOf('Q: '); i >= 0; i = text.indexOf('Q: ', i + 1)) {
    const end = text.indexOf('\nA:', i);
    const p = text.slice(i, end < 0 ? undefined : end + 3);
    assert.ok(!prompts.has(p), `held-out question in the corpus: ${p}`);
  }
  assert.equal(buildCorpus({ include: ['facts'], seed: 3 }).practised.length, 0, 'no practice by default');
});

test('buildCorpus: holdOut keeps a seeded share of the facts out of train and val entirely, practice included; 0 changes nothing', () => {
  const c = buildCorpus({ include: ['facts'], practice: 0.5, holdOut: 0.1, seed: 3 });
  const facts = loadFacts();
  assert.ok(Math.abs(c.heldOut.length / facts.length - 0.1) < 0.02, `${c.heldOut.length} of ${facts.length} held out`);
  const lines = new Set([...c.train, ...c.val].flatMap((d) => d.split('\n')));
  for (const f of c.heldOut) {
    for (const s of statements(f, () => 0)) assert.ok(!lines.has(s), `held-out statement in the corpus: ${s}`);
  }
  const key = (f: { subject: string; relation: string; object: string }) => `${f.subject}\u0000${f.relation}\u0000${f.object}`;
  const held = new Set(c.heldOut.map(key));
  assert.ok(c.practised.length > 0 && c.practised.every((q) => !held.has(key(q.fact))));
  assert.deepEqual(buildCorpus({ include: ['facts'], practice: 0.5, holdOut: 0, seed: 3 }), { ...buildCorpus({ include: ['facts'], practice: 0.5, seed: 3 }) });
  assert.equal(buildCorpus({ include: ['facts'], seed: 3 }).heldOut.length, 0);
  assert.throws(() => buildCorpus({ holdOut: 1.5 }), /holdOut must be a share in \[0, 1\]/);
});

test('buildCorpus: factRepeats n puts every train fact line n times into train; val and the other sources as with 1', () => {
  const o: CorpusOptions = { include: ['facts', 'brown'], practice: 0.3, seed: 4, valFraction: 0.05 };
  const one = buildCorpus(o);
  const three = buildCorpus({ ...o, factRepeats: 3 });
  const brown = new Set(buildCorpus({ include: ['brown'] }).train.concat(buildCorpus({ include: ['brown'] }).val));
  const isFact = (d: string) => !brown.has(d);
  // a practice pair "Q: ...\nA: ..." is two lines of text: counting text lines counts it too
  const lineCounts = (docs: string[]) => {
    const m = new Map<string, number>();
    for (const d of docs.filter(isFact)) for (const l of d.split('\n')) m.set(l, (m.get(l) ?? 0) + 1);
    return m;
  };
  const n1 = lineCounts(one.train);
  const n3 = lineCounts(three.train);
  assert.ok(n1.size > 20000, `${n1.size} fact lines`);
  assert.ok([...n1.keys()].some((l) => l.startsWith('Q: ')) && [...n1.keys()].some((l) => l.startsWith('A: ')));
  assert.equal(n3.size, n1.size);
  for (const [l, n] of n1) assert.equal(n3.get(l), 3 * n, l);
  // val is untouched, and none of its fact lines is trained on
  assert.deepEqual(three.val, one.val);
  const valLines = one.val.filter(isFact).flatMap((d) => d.split('\n'));
  assert.ok(valLines.length > 100);
  for (const l of valLines) assert.ok(!n3.has(l), `val line in train: ${l}`);
  // the other documents, in the same order; the original fact documents are all there; copies are 20 lines a document
  assert.deepEqual(three.train.filter((d) => !isFact(d)), one.train.filter((d) => !isFact(d)));
  const docs1 = new Set(one.train);
  const docs3 = new Set(three.train);
  for (const d of one.train) assert.ok(docs3.has(d));
  const extra = three.train.filter((d) => isFact(d) && !docs1.has(d));
  assert.ok(extra.length >= 2 * one.train.filter(isFact).length - 4, `${extra.length} copies`);
  for (const d of extra.slice(0, -2)) assert.ok(d.split('\n').filter((l) => !l.startsWith('A: ')).length <= 20);
  // mixed in: the copies are spread through train, not appended
  const copies = new Set(extra);
  const at = three.train.map((d, i) => (copies.has(d) ? i : -1)).filter((i) => i >= 0);
  assert.ok(at[0]! < three.train.length / 10 && at[at.length - 1]! > (three.train.length * 9) / 10, `${at[0]} .. ${at[at.length - 1]}`);
  // what the corpus reports is what it holds
  assert.equal(three.counts['facts'], one.counts['facts']! + extra.length);
  assert.equal(three.counts['brown'], one.counts['brown']);
  assert.equal(three.bytes, bytes([...three.train, ...three.val]));
  assert.deepEqual(buildCorpus({ ...o, factRepeats: 3 }), three);
  assert.deepEqual(buildCorpus({ ...o, factRepeats: 1 }), one);
  // the budget is the base corpus's: repeats add to it
  const small = buildCorpus({ ...o, maxBytes: 5e5 });
  const small2 = buildCorpus({ ...o, maxBytes: 5e5, factRepeats: 2 });
  assert.deepEqual(small2.val, small.val);
  assert.ok(small2.bytes > small.bytes + 0.8 * bytes(small.train.filter(isFact)), `${small2.bytes} vs ${small.bytes}`);
});

test('buildCorpus: deterministic given the seed; another seed, another order and split', () => {
  const o: CorpusOptions = { maxBytes: 1e6, gcidePath: NO_GCIDE };
  const a = buildCorpus({ ...o, seed: 5 });
  assert.deepEqual(buildCorpus({ ...o, seed: 5 }), a);
  const b = buildCorpus({ ...o, seed: 6 });
  assert.notDeepEqual(b.train, a.train);
  assert.deepEqual(buildCorpus({ gcidePath: NO_GCIDE }), full);
  // include order does not matter
  assert.deepEqual(buildCorpus({ ...o, seed: 5, include: ['facts', 'brown', 'gcide', 'wordnet'] }), a);
});

test('buildCorpus: maxBytes is met roughly; facts first, the rest shared by size', () => {
  for (const maxBytes of [3e5, 2e6, 5e6]) {
    const c = buildCorpus({ maxBytes, gcidePath: NO_GCIDE });
    // each source may overshoot by one document (a Brown file is ~12 KB)
    assert.ok(c.bytes >= Math.min(maxBytes, full.bytes) && c.bytes <= maxBytes + 60e3, `${maxBytes}: ${c.bytes}`);
  }
  const small = buildCorpus({ maxBytes: 2e6, gcidePath: NO_GCIDE });
  assert.equal(small.counts['facts'], full.counts['facts']);
  assert.ok(small.counts['wordnet']! > 100 && small.counts['brown']! > 20, JSON.stringify(small.counts));
  // fewer bytes than the facts: only facts, the first phrasing round first
  const tiny = buildCorpus({ maxBytes: 5e4, gcidePath: NO_GCIDE });
  assert.deepEqual(Object.entries(tiny.counts).filter(([, n]) => n > 0).map(([s]) => s), ['facts']);
  assert.ok(tiny.bytes < 5e4 + 2e3);
  const big = buildCorpus({ maxBytes: 1e12, gcidePath: NO_GCIDE });
  assert.equal(big.bytes, full.bytes);
});

test('buildCorpus: split by document per source at valFraction', () => {
  const total = all.length;
  assert.ok(Math.abs(full.val.length / total - 0.02) < 0.005, `${full.val.length} / ${total}`);
  const trainSet = new Set(full.train);
  assert.ok(!full.val.some((d) => trainSet.has(d)));
  const tenth = buildCorpus({ valFraction: 0.1, include: ['brown', 'wordnet'] });
  const n = tenth.train.length + tenth.val.length;
  assert.ok(Math.abs(tenth.val.length / n - 0.1) < 0.01, `${tenth.val.length} / ${n}`);
  assert.equal(buildCorpus({ valFraction: 0, include: ['brown'] }).val.length, 0);
  // a small budget still holds out at least one document per source
  const small = buildCorpus({ maxBytes: 3e5, include: ['brown', 'wordnet'] });
  assert.ok(small.val.length >= 2 && small.train.length > small.val.length);
  // fact documents in val come from the second and third phrasing rounds only (checked above: all facts in train)
  assert.ok(full.val.some((d) => d.split('\n').length === 20 && !/\((noun|verb)\):/.test(d)));
});

test('buildCorpus: GCIDE entries from a dictzip file and its index, markup removed', async () => {
  const dir = await tempDir();
  const entries = [
    '00-database-short\n   A tiny test dictionary\n',
    'Apple \\Ap"ple\\ ([a^]p"p\'l), n. [OE. appel, eppel, AS. [ae]ppel.]\n   1. The fleshy pome or fruit of a rosaceous tree ({Pyrus\n      malus}).\n      [1913 Webster]\n\n   2. Any tree of the genus {Pyrus}. [R.]\n      [1913 Webster]\n',
    'Bluely \\Blue"ly\\, adv.\n   With a blue color. --Swift.\n   [1913 Webster]\n',
    'Caf[\'e] \\Caf`[\'e]"\\, n.\n   A coffee house; a restaurant.\n   [Webster 1913 Suppl.]\n',
  ];
  let dict = '';
  let index = '';
  for (const e of entries) {
    const word = e.slice(0, e.search(/[ \n]/));
    index += `${word}\t${b64(Buffer.byteLength(dict))}\t${b64(Buffer.byteLength(e))}\n`;
    if (word === 'Apple') index += `apple\t${b64(Buffer.byteLength(dict))}\t${b64(Buffer.byteLength(e))}\n`; // two headwords, one entry
    dict += e;
  }
  await writeFile(join(dir, 'gcide.dict.dz'), gzipSync(dict));
  await writeFile(join(dir, 'gcide.index'), index);
  const c = buildCorpus({ include: ['gcide'], gcidePath: join(dir, 'gcide.dict.dz'), valFraction: 0 });
  assert.deepEqual(c.notes, []);
  assert.equal(c.counts['gcide'], 1);
  assert.equal(
    c.train[0],
    'Apple, n. 1. The fleshy pome or fruit of a rosaceous tree (Pyrus malus).\n2. Any tree of the genus Pyrus. [R.]\n\n' +
      'Bluely, adv. With a blue color. --Swift.\n\nCafé, n. A coffee house; a restaurant.',
  );
  assert.equal(gcideEntry('\n\n   tail of the entry before\n0 \\0\\ adj.\n   1. zero.\n        [WordNet 1.5]\n'), '0, adj. 1. zero.');
  // a headword glued to the source tag before it starts a new entry; tags inside lines go too
  assert.equal(
    gcideEntry('Tame \\Tame\\, a.\n   Gentle. [1913 Webster] Tamer \\Tam"er\\, n.\n   One who tames. [WordNet\n   sense 1]\n'),
    'Tame, a. Gentle.\nTamer, n. One who tames.',
  );
});

test('writeCorpus: train.txt and val.txt round trip through DOC_SEPARATOR', async () => {
  const dir = join(await tempDir(), 'nested', 'out');
  const c = buildCorpus({ maxBytes: 2e5, seed: 3, gcidePath: NO_GCIDE });
  const paths = await writeCorpus(dir, c);
  assert.deepEqual(paths, { train: join(dir, 'train.txt'), val: join(dir, 'val.txt') });
  const train = await readFile(paths.train, 'utf8');
  assert.deepEqual(splitDocuments(train), c.train);
  assert.deepEqual(splitDocuments(await readFile(paths.val, 'utf8')), c.val);
  assert.equal(train.split('<|endoftext|>').length, c.train.length);
  assert.ok(DOC_SEPARATOR.includes('<|endoftext|>'));
  // an empty split is an empty file
  const none = await writeCorpus(dir, { ...c, val: [] });
  assert.equal(await readFile(none.val, 'utf8'), '');
  assert.deepEqual(splitDocuments(''), []);
});

test('buildCorpus: bad options are clear errors', () => {
  const bad: [unknown, RegExp][] = [
    [{ maxBytes: 0 }, /maxBytes must be a positive number/],
    [{ maxBytes: -5 }, /maxBytes/],
    [{ maxBytes: NaN }, /maxBytes/],
    [{ maxBytes: '1e6' }, /maxBytes/],
    [{ valFraction: 1 }, /valFraction must be a number in \[0, 1\)/],
    [{ valFraction: -0.1 }, /valFraction/],
    [{ seed: 1.5 }, /seed must be an integer/],
    [{ include: [] }, /include must be a non-empty array/],
    [{ include: ['wikipedia'] }, /unknown source 'wikipedia'.*wordnet, brown, gcide, facts/],
    [{ include: ['brown', 'brown'] }, /'brown' is given twice/],
    [{ maxbytes: 5 }, /unknown option 'maxbytes'/],
    [{ gcidePath: '' }, /gcidePath/],
    [{ practice: 1.5 }, /practice must be a share in \[0, 1\]/],
    [{ factRepeats: 0 }, /factRepeats must be an integer >= 1/],
    [{ factRepeats: 1.5 }, /factRepeats must be an integer >= 1.*got 1\.5/],
    [{ factRepeats: -1 }, /factRepeats/],
    [{ factRepeats: 'x' }, /factRepeats.*got x/],
    [{ factRepeats: NaN }, /factRepeats/],
    [{ factrepeats: 2 }, /unknown option 'factrepeats'.*factRepeats/],
  ];
  for (const [o, rx] of bad) {
    assert.throws(
      () => buildCorpus(o as CorpusOptions),
      (e: unknown) => e instanceof EngramError && rx.test(e.message) && e.message.startsWith('buildCorpus: '),
      JSON.stringify(o),
    );
  }
  assert.deepEqual([...CORPUS_SOURCES], ['wordnet', 'brown', 'gcide', 'facts']);
});

test('buildCorpus: fast once the sources are read', () => {
  const rng = new Rng(1);
  const t = performance.now();
  for (let i = 0; i < 3; i++) buildCorpus({ maxBytes: 1e6 + rng.int(1e6), seed: i, gcidePath: NO_GCIDE });
  assert.ok(performance.now() - t < 3000, `${performance.now() - t} ms`);
});

function b64(n: number): string {
  const digits = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  let s = '';
  do {
    s = digits[n % 64]! + s;
    n = Math.floor(n / 64);
  } while (n > 0);
  return s;
}

test('buildCorpus: reading adds documents of invented facts\' statements and questions whose answers they state, in train only', () => {
  const base = buildCorpus({ include: ['facts'], holdOut: 0.2, seed: 3 });
  const c = buildCorpus({ include: ['facts'], holdOut: 0.2, reading: 30, seed: 3 });
  assert.equal(c.counts['reading'], 30);
  assert.deepEqual(c.val, base.val);
  assert.deepEqual(base.invented, []);
  assert.equal(c.train.length, base.train.length + 30);
  assert.equal(c.invented.length, 30 * 6);
  const docs = c.train.filter((d) => d.includes('\nQ: '));
  assert.equal(docs.length, 30);
  const real = new Set(loadFacts().map((f) => f.subject));
  for (const f of c.invented) assert.ok(!real.has(f.subject), f.subject);
  // every statement line of a reading document is an invented fact's, and nothing else in train names their subjects
  const said = new Set(c.invented.flatMap((f) => statements(f, () => 0)));
  const subjects = c.invented.map((f) => f.subject.toLowerCase());
  for (const d of docs) {
    const lines = d.split('\n');
    const statementsPart = lines.slice(0, 6).join('\n');
    const qa = lines.slice(6);
    assert.equal(qa.length, 6, d);
    for (let i = 0; i < qa.length; i += 2) {
      assert.match(qa[i]!, /^Q: /);
      const answer = qa[i + 1]!.replace(/^A: /, '');
      assert.ok(statementsPart.toLowerCase().includes(answer.toLowerCase()), `answer '${answer}' is stated: ${d}`);
    }
    for (const l of lines.slice(0, 6)) assert.ok(said.has(l), `not an invented fact's statement: ${l}`);
  }
  const rest = base.train.join('\n').toLowerCase();
  assert.ok(subjects.every((s) => !rest.includes(s)), 'an invented subject occurs elsewhere in train');
  assert.throws(() => buildCorpus({ reading: -1 }), /reading must be an integer >= 0/);
});

test('buildCorpus: readingGroup states a reading document\'s facts in groups of one relation', () => {
  const c = buildCorpus({ include: ['facts'], holdOut: 0.2, reading: 30, readingGroup: 3, seed: 3 });
  assert.equal(c.counts['reading'], 30);
  assert.equal(c.invented.length, 30 * 6);
  const relationOf = new Map(c.invented.map((f) => [f.subject, f.relation]));
  for (let d = 0; d < 30; d++) {
    const facts = c.invented.slice(6 * d, 6 * d + 6);
    for (let g = 0; g < 6; g += 3) assert.ok(facts.slice(g, g + 3).every((f) => f.relation === facts[g]!.relation));
  }
  // each document's statements are its 6 facts', in some order: per relation, three subjects
  for (const doc of c.train.filter((x) => x.includes('\nQ: '))) {
    const named = [...relationOf.keys()].filter((s) => doc.toLowerCase().includes(s.toLowerCase()));
    assert.equal(named.length, 6, doc);
    const perRelation = new Map<string, number>();
    for (const s of named) perRelation.set(relationOf.get(s)!, (perRelation.get(relationOf.get(s)!) ?? 0) + 1);
    assert.ok([...perRelation.values()].every((n) => n % 3 === 0), doc);
  }
  assert.deepEqual(buildCorpus({ include: ['facts'], holdOut: 0.2, reading: 30, readingGroup: 1, seed: 3 }).train, buildCorpus({ include: ['facts'], holdOut: 0.2, reading: 30, seed: 3 }).train);
  assert.throws(() => buildCorpus({ reading: 3, readingGroup: 4 }), /readingGroup must divide/);
});
