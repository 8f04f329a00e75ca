// eval facts: SQuAD-style normalization and scoring, the accepted forms of real questions, the deterministic
// selection of questions, end-to-end evaluations of a tiny random model (shape and counts, not quality), batched
// answering equal to one question at a time and to greedyAnswer, and the answer's post-processing.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FACT_RELATIONS, loadFacts, questions, statements, type Question } from '../data/facts.ts';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import type { Gpu } from '../gpu/device.ts';
import { testGpu } from '../testing/gpu.ts';
import { acceptedForms, answerText, evalFacts, exactMatch, factsTable, greedyAnswer, majorityBaseline, normalizeAnswer, selectQuestions, tokenF1, type FactsItem } from './facts.ts';

const ALL = questions(loadFacts());
const find = (relation: string, subject: string): Question => {
  const q = ALL.find((x) => x.fact.relation === relation && x.fact.subject === subject);
  assert.ok(q, `${relation} of ${subject}`);
  return q;
};

test('normalizeAnswer: case, punctuation, articles, whitespace; diacritics and digits kept', () => {
  assert.equal(normalizeAnswer('  The   Euro. '), 'euro');
  assert.equal(normalizeAnswer('a Transition Metal'), 'transition metal');
  assert.equal(normalizeAnswer('An   apple, the pear!'), 'apple pear');
  assert.equal(normalizeAnswer('Washington D.C.'), 'washington dc');
  assert.equal(normalizeAnswer('Guinea-Bissau'), 'guineabissau');
  assert.equal(normalizeAnswer('+33'), '33');
  assert.equal(normalizeAnswer('.fr'), 'fr');
  assert.equal(normalizeAnswer('1776'), '1776');
  assert.equal(normalizeAnswer('São Tomé'), 'são tomé');
  assert.equal(normalizeAnswer('REYKJAVÍK'), 'reykjavík');
  assert.equal(normalizeAnswer('Sa\u0303o'), normalizeAnswer('S\u00e3o')); // NFC: combining tilde = precomposed
  assert.equal(normalizeAnswer('thé'), 'thé'); // not an article
  assert.equal(normalizeAnswer('theatre'), 'theatre');
  assert.equal(normalizeAnswer('the'), '');
});

test('exactMatch and tokenF1: normalized equality, partial credit, best over forms', () => {
  const forms = ['the Euro', 'Euro'];
  assert.equal(exactMatch('euro', forms), 1);
  assert.equal(exactMatch('The Euro.', forms), 1);
  assert.equal(exactMatch('the euro coin', forms), 0);
  assert.equal(tokenF1('the euro coin', forms), 2 / 3); // P 1/2, R 1
  assert.equal(tokenF1('Pound', forms), 0);
  assert.equal(exactMatch('Pound', forms), 0);
  // partial: "transition metal" vs "metal": P 1/2, R 1
  assert.equal(tokenF1('a metal', ['a transition metal']), 2 / 3);
  assert.equal(tokenF1('transition metal', ['a transition metal']), 1);
  // multiset counting: "metal metal" has one word in common with "transition metal"
  assert.equal(tokenF1('metal metal', ['transition metal']), 0.5);
  // max over forms
  assert.equal(tokenF1('new guinea', ['Papua New Guinea', 'New Guinea']), 1);
  assert.equal(tokenF1('papua guinea', ['Papua New Guinea', 'Guinea']), 0.8);
  assert.equal(exactMatch('New Guinea', ['Papua New Guinea', 'New Guinea']), 1);
  // empty after normalization
  assert.equal(tokenF1('', ['Euro']), 0);
  assert.equal(tokenF1('the', ['a']), 1);
  assert.equal(exactMatch('', ['Euro']), 0);
  assert.equal(tokenF1('Euro', []), 0);
  assert.equal(exactMatch('Euro', []), 0);
  // numbers are words like any other
  assert.equal(exactMatch('1776', ['1776']), 1);
  assert.equal(exactMatch('1777', ['1776']), 0);
});

test('acceptedForms of real questions: as rendered, raw, without an article', () => {
  const cur = find('currency', 'Germany');
  assert.equal(cur.answer, ' the Euro');
  assert.deepEqual(acceptedForms(cur), ['the Euro', 'Euro']);
  assert.equal(exactMatch('Euro', acceptedForms(cur)), 1);
  assert.equal(exactMatch('the Euro', acceptedForms(cur)), 1);

  const cat = find('element category', 'Iron');
  assert.equal(cat.answer, ' a transition metal');
  assert.deepEqual(acceptedForms(cat), ['a transition metal', 'transition metal']);
  assert.equal(exactMatch('Transition metal.', acceptedForms(cat)), 1);

  const cap = find('capital', 'France');
  assert.deepEqual(acceptedForms(cap), ['Paris']);
  const state = find('standard state', 'Oxygen');
  assert.deepEqual(acceptedForms(state), ['a gas', 'gas']);
});

test('selectQuestions: relations, evenly spaced and deterministic per relation, unknown relations named', () => {
  const caps = ALL.filter((q) => q.fact.relation === 'capital');
  const picked = selectQuestions(ALL, { relations: ['capital', 'symbol'], perRelation: 4 });
  assert.equal(picked.length, 8);
  assert.deepEqual(picked.slice(0, 4), [0, 1, 2, 3].map((i) => caps[Math.floor((i * caps.length) / 4)]));
  assert.ok(picked.slice(4).every((q) => q.fact.relation === 'symbol'));
  assert.deepEqual(selectQuestions(ALL, { relations: ['capital', 'symbol'], perRelation: 4 }), picked);
  assert.deepEqual(selectQuestions(ALL, { relations: ['capital'] }), caps);
  assert.equal(selectQuestions(ALL, { relations: ['capital'], perRelation: 1e6 }).length, caps.length);
  const all = selectQuestions(ALL, { perRelation: 2 });
  assert.equal(all.length, 2 * FACT_RELATIONS.length);
  assert.throws(() => selectQuestions(ALL, { relations: ['capitol'] }), (e: Error) => /unknown relation 'capitol'/.test(e.message) && e.message.includes(FACT_RELATIONS.join(', ')));
  assert.throws(() => selectQuestions(ALL, { perRelation: 0 }), /positive integer/);
});

/** a tokenizer trained on a few subjects' statements and practice questions, and a tiny random model over it */
async function tinySetup(gpu: Gpu): Promise<{ tok: Tokenizer; model: Transformer }> {
  const dir = mkdtempSync(join(tmpdir(), 'engram-evalfacts-'));
  try {
    const facts = loadFacts().filter((f) => ['France', 'Germany', 'Japan', 'Iron', 'Oxygen'].includes(f.subject));
    const text = facts.flatMap((f) => statements(f, () => 0.5)).join('\n');
    writeFileSync(join(dir, 'train.txt'), `${text}\n${ALL.slice(0, 50).map((q) => q.prompt + q.answer).join('\n')}\n`);
    const tok = await Tokenizer.fromJson(await trainTokenizer([join(dir, 'train.txt')], { vocabSize: 320, special: ['<|endoftext|>'] }));
    const config = parseModelConfig({
      vocabSize: tok.vocabSize,
      dim: 16,
      layers: 2,
      heads: 2,
      kvHeads: 1,
      ffnHidden: 24,
      maxSeqLen: 96,
      memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'f32' },
    });
    return { tok, model: await Transformer.create(gpu, config, 5) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** runs a test body with the tiny setup on the test GPU, disposing the model after it */
async function withTiny(body: (gpu: Gpu, tok: Tokenizer, model: Transformer) => Promise<void>): Promise<void> {
  const gpu = await testGpu();
  const { tok, model } = await tinySetup(gpu);
  try {
    await body(gpu, tok, model);
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    model.dispose();
  }
}

test('evalFacts on a tiny random model: one item per question, scores in range, relation counts sum to n', () =>
  withTiny(async (gpu, tok, model) => {
    const qs = [find('capital', 'France'), find('currency', 'Germany'), find('continent', 'Japan'), find('element category', 'Iron'), find('symbol', 'Oxygen')];
    const seen: FactsItem[] = [];
    const r = await evalFacts(gpu, model, tok, qs, { maxNew: 4, onItem: (it) => seen.push(it) });
    assert.equal(r.n, 5);
    assert.equal(r.items.length, 5);
    assert.deepEqual(seen, r.items);
    assert.deepEqual(Object.keys(r.byRelation).sort(), ['capital', 'continent', 'currency', 'element category', 'symbol']);
    assert.equal(Object.values(r.byRelation).reduce((s, x) => s + x.n, 0), r.n);
    for (const [i, it] of r.items.entries()) {
      assert.equal(it.prompt, qs[i]!.prompt);
      assert.equal(it.relation, qs[i]!.fact.relation);
      assert.deepEqual(it.accepted, acceptedForms(qs[i]!));
      assert.equal(typeof it.answer, 'string');
      assert.ok(!it.answer.includes('\n'));
      assert.ok(it.em === 0 || it.em === 1);
      assert.equal(it.em, exactMatch(it.answer, it.accepted));
      assert.equal(it.f1, tokenF1(it.answer, it.accepted));
      assert.ok(it.f1 >= 0 && it.f1 <= 1 && it.f1 >= it.em);
    }
    assert.ok(Math.abs(r.em - r.items.reduce((s, it) => s + it.em, 0) / 5) < 1e-12);
    assert.ok(Math.abs(r.f1 - r.items.reduce((s, it) => s + it.f1, 0) / 5) < 1e-12);
    // greedy decoding is deterministic
    const again = await evalFacts(gpu, model, tok, qs, { maxNew: 4 });
    assert.deepEqual(again, r);
    const table = factsTable(r);
    assert.match(table, /^relation\s+n\s+EM\s+F1$/m);
    assert.match(table, /^total\s+5\s/m);
    assert.match(table, /^element category\s+1\s/m);
  }));

test('evalFacts: batches of 3 give the items of one question at a time, in order; answers are greedyAnswer\'s', () =>
  withTiny(async (gpu, tok, model) => {
    // prompts of different lengths, 7 questions: batches of 3, 3 and 1
    const qs = selectQuestions(ALL, { relations: ['capital', 'currency', 'element category', 'symbol'], perRelation: 2 }).slice(0, 7);
    assert.ok(new Set(qs.map((q) => tok.encode(q.prompt).length)).size > 1);
    const seen: FactsItem[] = [];
    const three = await evalFacts(gpu, model, tok, qs, { maxNew: 5, batch: 3, onItem: (it) => seen.push(it) });
    const one = await evalFacts(gpu, model, tok, qs, { maxNew: 5, batch: 1 });
    assert.deepEqual(three, one);
    assert.deepEqual(seen, three.items);
    assert.deepEqual(three.items.map((it) => it.prompt), qs.map((q) => q.prompt));
    // the same post-processing as the KV-cache path (the two paths agree here: no near-ties in this model)
    for (const [i, q] of qs.entries()) assert.equal(three.items[i]!.answer, await greedyAnswer(gpu, model, tok, q.prompt, 5));
    await assert.rejects(evalFacts(gpu, model, tok, qs, { batch: 0 }), /batch must be a positive integer/);
    assert.deepEqual((await evalFacts(gpu, model, tok, [], {})).items, []);
  }));

test('answerText: decoded, end-of-text dropped, first line, trimmed, no final full stop', () => {
  const tok = { decode: (ids: readonly number[]) => ids.map((i) => [' Paris.', '\nQ: next', '<|endoftext|>', ' the Euro', ' 1.5'][i]).join('') } as unknown as Tokenizer;
  assert.equal(answerText(tok, [0, 1]), 'Paris');
  assert.equal(answerText(tok, [3, 2]), 'the Euro');
  assert.equal(answerText(tok, [4]), '1.5');
  assert.equal(answerText(tok, [2]), '');
});

test('majorityBaseline: each question gets its relation\'s most common answer in the pool, scored as a model\'s answer would be', () => {
  const q = (relation: string, subject: string, object: string): Question => ({ prompt: `Q: ${subject}?\nA:`, answer: ` ${object}`, fact: { subject, relation, object } });
  const pool = [q('continent', 'France', 'Europe'), q('continent', 'Spain', 'Europe'), q('continent', 'Peru', 'South America'), q('currency', 'Chile', 'Peso'), q('currency', 'Japan', 'Yen'), q('currency', 'Mexico', 'Peso')];
  const b = majorityBaseline([pool[2]!, pool[0]!, pool[4]!], pool);
  assert.deepEqual(b.items.map((i) => i.answer), ['Europe', 'Europe', 'Peso']);
  assert.deepEqual(b.items.map((i) => i.em), [0, 1, 0]);
  assert.equal(b.n, 3);
  assert.ok(Math.abs(b.em - 1 / 3) < 1e-12);
  assert.deepEqual(b.byRelation['continent'], { n: 2, em: 0.5, f1: 0.5 });
  // on the real questions: standard state is mostly "a solid", capitals are all different
  const all = questions(loadFacts());
  const real = majorityBaseline(selectQuestions(all, { perRelation: 60 }), all);
  assert.ok(real.byRelation['standard state']!.em > 0.7 && real.byRelation['capital']!.em === 0, JSON.stringify(real.byRelation));
});
