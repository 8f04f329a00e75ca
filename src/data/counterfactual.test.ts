import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { counterfactualGroups } from './counterfactual.ts';
import { loadFacts, type Fact } from './facts.ts';

test('counterfactualGroups: real subjects of one relation per group, an object of the relation that is never true of the subject, deterministic', () => {
  const all = loadFacts();
  const kept = all.filter((_, i) => i % 5 !== 0);
  const groups = counterfactualGroups(kept, 2000, 3, new Rng(3), all);
  assert.deepEqual(counterfactualGroups(kept, 2000, 3, new Rng(3), all), groups);
  const key = (f: Fact) => `${f.subject}\u0000${f.relation}\u0000${f.object}`;
  const truth = new Set(all.map(key));
  const keptPairs = new Set(kept.map((f) => `${f.subject}\u0000${f.relation}`));
  const objects = new Set(all.map((f) => `${f.relation}\u0000${f.object}`));
  assert.equal(groups.length, 2000);
  for (const g of groups) {
    assert.equal(g.length, 3);
    assert.equal(new Set(g.map((f) => f.relation)).size, 1);
    assert.equal(new Set(g.map((f) => f.subject)).size, 3);
    for (const f of g) {
      assert.ok(!truth.has(key(f)), `${f.subject} ${f.relation} ${f.object} is true`);
      assert.ok(keptPairs.has(`${f.subject}\u0000${f.relation}`), `${f.subject} ${f.relation} is no kept fact's`);
      assert.ok(objects.has(`${f.relation}\u0000${f.object}`), `${f.relation}: ${f.object}`);
    }
  }
  // relations near uniform (2000 / the relations), and a fact drawn again gets other objects
  const per = new Map<string, number>();
  for (const g of groups) per.set(g[0]!.relation, (per.get(g[0]!.relation) ?? 0) + 1);
  for (const [r, n] of per) assert.ok(n > 60 && n < 170, `${r}: ${n}`);
  const answers = new Map<string, Set<string>>();
  for (const f of groups.flat()) (answers.get(`${f.subject}\u0000${f.relation}`) ?? answers.set(`${f.subject}\u0000${f.relation}`, new Set()).get(`${f.subject}\u0000${f.relation}`)!).add(f.object);
  assert.ok([...answers.values()].some((s) => s.size > 1));
  // objects by frequency: the commonest continent stays the commonest answer
  const continents = groups.flat().filter((f) => f.relation === 'continent');
  const count = (xs: string[]) => [...xs.reduce((m, x) => m.set(x, (m.get(x) ?? 0) + 1), new Map<string, number>())].sort((a, b) => b[1] - a[1]);
  assert.ok(continents.length > 100);
  assert.ok(count(continents.map((f) => f.object)).slice(0, 2).some(([o]) => o === count(all.filter((f) => f.relation === 'continent').map((f) => f.object))[0]![0]));
});

test('counterfactualGroups: no groups asked, none made; clear errors', () => {
  assert.deepEqual(counterfactualGroups([], 0, 3, new Rng(1)), []);
  assert.throws(() => counterfactualGroups([{ subject: 'A', relation: 'r', object: 'x' }], 1, 3, new Rng(1)), /no relation has 3 subjects/);
  assert.throws(() => counterfactualGroups([], -1, 3, new Rng(1)), /groups -1/);
});
