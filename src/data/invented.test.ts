import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { FACT_RELATIONS, loadFacts, practice, statements } from './facts.ts';
import { askingDocument, inventFacts, inventGroups, readingDocument } from './invented.ts';

test('inventFacts: new unique subjects, real objects of the relation, every relation, deterministic', () => {
  const facts = inventFacts(3000, new Rng(1));
  assert.deepEqual(inventFacts(3000, new Rng(1)), facts);
  const real = loadFacts();
  const realSubjects = new Set(real.map((f) => f.subject.toLowerCase()));
  const objects = new Set(real.map((f) => `${f.relation}\u0000${f.object}`));
  assert.equal(new Set(facts.map((f) => f.subject.toLowerCase())).size, facts.length);
  for (const f of facts) {
    assert.ok(!realSubjects.has(f.subject.toLowerCase()), f.subject);
    assert.ok(objects.has(`${f.relation}\u0000${f.object}`), `${f.relation}: ${f.object}`);
    assert.match(f.subject, /^[A-Z][a-z]+$/);
  }
  // relations uniform: each near 3000 / 18
  for (const r of FACT_RELATIONS) {
    const n = facts.filter((f) => f.relation === r).length;
    assert.ok(n > 100 && n < 250, `${r}: ${n}`);
  }
  // every invented fact is askable, and `avoid` keeps a subject out
  assert.equal(practice(facts).length, facts.length);
  const avoid = new Set(facts.slice(0, 100).map((f) => f.subject));
  assert.ok(inventFacts(3000, new Rng(1), avoid).every((f) => !avoid.has(f.subject)));
});

test('readingDocument states the facts, then asks about some of them; askingDocument only asks', () => {
  const facts = inventFacts(6, new Rng(2));
  const doc = readingDocument(facts, 3, new Rng(3)).split('\n');
  assert.equal(doc.length, 6 + 2 * 3);
  doc.slice(0, 6).forEach((l, i) => assert.ok(statements(facts[i]!, () => 0).includes(l), l));
  const asked = practice(facts).map((q) => `${q.prompt}${q.answer}`);
  for (let i = 6; i < doc.length; i += 2) assert.ok(asked.includes(`${doc[i]}\n${doc[i + 1]}`));
  assert.equal(askingDocument(facts), asked.join('\n'));
});

test('inventGroups: groups of one relation each, subjects new and unique across groups, relations spread, deterministic', () => {
  const groups = inventGroups(1000, 3, new Rng(4));
  assert.deepEqual(inventGroups(1000, 3, new Rng(4)), groups);
  assert.ok(groups.every((g) => g.length === 3 && g.every((f) => f.relation === g[0]!.relation)));
  const facts = groups.flat();
  assert.equal(new Set(facts.map((f) => f.subject.toLowerCase())).size, facts.length);
  const realSubjects = new Set(loadFacts().map((f) => f.subject.toLowerCase()));
  assert.ok(facts.every((f) => !realSubjects.has(f.subject.toLowerCase())));
  for (const r of FACT_RELATIONS) {
    const n = groups.filter((g) => g[0]!.relation === r).length;
    assert.ok(n > 25 && n < 90, `${r}: ${n} groups`);
  }
  assert.equal(practice(facts).length, facts.length);
  const avoid = new Set(facts.slice(0, 50).map((f) => f.subject));
  assert.ok(inventGroups(1000, 3, new Rng(4), avoid).flat().every((f) => !avoid.has(f.subject)));
});
