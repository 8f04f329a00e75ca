// memory bank over LanceDB: create / open / reopen and the manifest; refusal of a bank made for another
// model (fingerprint, memory shape, vectors); add / list / count / get / remove and their input checks
// (duplicate ids, bad blobs, ids with quotes); BM25 search among 50 made-up facts; an added fact found by
// the very next search, from this handle and from another one, and a removed one gone at once; automatic
// reindexing; ties ranked by id (a reference removed and added back ranks where it did); reciprocal
// rank fusion with vectors; and a writer SIGKILLed in the middle of a large add
// (tests/fixtures/bank_child.ts): the bank opens at its previous state, searches, and takes adds again.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, watch } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { EngramError } from '../gpu/errors.ts';
import { fillerRefs, MODEL, randomMemory } from '../../tests/fixtures/bank_child.ts';
import { MemoryBank, MemoryBankError, RRF_K, type BankModel, type NewReference } from './bank.ts';
import { decodeMemory, encodeMemory, MEMORY_HEADER_BYTES } from './blob.ts';

const CHILD = fileURLToPath(new URL('../../tests/fixtures/bank_child.ts', import.meta.url));
const root = await mkdtemp(join(tmpdir(), 'engram-bank-test-'));
after(() => rm(root, { recursive: true, force: true }));

let n = 0;
/** a fresh bank folder path per test (not created) */
const fresh = (): string => join(root, `bank${n++}`);

async function rejectsWith(p: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof MemoryBankError && e instanceof EngramError, `expected a MemoryBankError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

/** a reference with a real memory of MODEL's shape */
const ref = (id: string | undefined, text: string, seed = 1): NewReference => ({ ...(id === undefined ? {} : { id }), text, tokens: [5, 6, seed % 100], memory: randomMemory(MODEL, seed) });

// 50 facts about made-up things: every name is a word of its own, found in exactly one fact
const PRE = ['zor', 'quen', 'vex', 'plim', 'drav', 'kel', 'mur', 'tash', 'ulo', 'brin'];
const SUF = ['blax', 'taria', 'moor', 'quat', 'ith'];
const KINDS = ['river', 'mountain', 'festival', 'machine', 'language'];
const NAMES = Array.from({ length: 50 }, (_, i) => PRE[i % 10]! + SUF[Math.floor(i / 10)]!);
const FACTS = NAMES.map((name, i) => ref(`fact-${i}`, `The ${KINDS[i % 5]} ${name[0]!.toUpperCase() + name.slice(1)} was first recorded in the year ${1200 + 7 * i}.`, 1000 + i));

test('create, reopen, and a clear error for a bank that is not there', async () => {
  const dir = fresh();
  await rejectsWith(MemoryBank.open(dir, { model: MODEL }), new RegExp(`no memory bank at ${dir}: no such folder; pass create: true`));
  assert.ok(!existsSync(dir), 'a failed open leaves no folder behind');
  await mkdir(dir);
  await rejectsWith(MemoryBank.open(dir, { model: MODEL }), /it has no 'refs' table/);

  const bank = await MemoryBank.open(dir, { model: MODEL, create: true });
  assert.equal(bank.manifest.fingerprint, 'test-model-a');
  assert.deepEqual(bank.manifest.layers, [0, 2]);
  assert.equal(bank.manifest.vectorDim, null);
  assert.equal(await bank.count(), 0);
  assert.deepEqual(await bank.search('anything'), []);
  assert.deepEqual(await bank.list(), []);
  await bank.add([ref('a', 'first reference')]);
  bank.close();
  await rejectsWith(bank.count(), /MemoryBank.count: the bank at .* is closed/);

  // create: true on an existing bank just opens it
  for (const create of [false, true]) {
    const again = await MemoryBank.open(dir, { model: MODEL, create });
    assert.equal(await again.count(), 1);
    assert.equal(again.manifest.createdAt, bank.manifest.createdAt);
    again.close();
  }
});

test('a bank built for another model is refused, naming both and asking for a rebuild', async () => {
  const dir = fresh();
  (await MemoryBank.open(dir, { model: MODEL, create: true })).close();
  const other: BankModel = { ...MODEL, fingerprint: 'test-model-b' };
  await rejectsWith(
    MemoryBank.open(dir, { model: other }),
    /memory bank at .* was built for model test-model-a, not for this model \(test-model-b\): .*rebuild it with this model/,
  );
  await rejectsWith(MemoryBank.open(dir, { model: other, create: true }), /built for model test-model-a/);
  // same weights, other memory dims: the stored memories do not fit either
  await rejectsWith(MemoryBank.open(dir, { model: { ...MODEL, tokens: 8 } }), /holds memories with tokens 4, but this model asks for tokens 8: rebuild it with this model/);
  await rejectsWith(MemoryBank.open(dir, { model: { ...MODEL, layers: [0, 1] } }), /layers \[0,2\], but this model asks for layers \[0,1\]/);
  await rejectsWith(MemoryBank.open(dir, { model: { ...MODEL, vectorDim: 4 } }), /vectorDim null, but this model asks for vectorDim 4/);
  await rejectsWith(MemoryBank.open(dir, { model: { ...MODEL, fingerprint: '' } }), /model.fingerprint must be a non-empty string/);
});

test('add, list (insertion order), count, get (blobs back), remove', async () => {
  const bank = await MemoryBank.open(fresh(), { model: MODEL, create: true });
  const batch = [ref('r1', 'one', 1), ref(undefined, 'two', 2), ref("it's", 'three', 3), ref('back\\slash', 'four', 4)];
  const ids = await bank.add(batch);
  assert.equal(ids.length, 4);
  assert.deepEqual([ids[0], ids[2], ids[3]], ['r1', "it's", 'back\\slash']);
  assert.match(ids[1]!, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.deepEqual(await bank.add([ref('r5', 'five', 5)]), ['r5']);
  assert.equal(await bank.count(), 5);

  const listed = await bank.list();
  assert.deepEqual(listed.map((r) => r.text), ['one', 'two', 'three', 'four', 'five']);
  assert.deepEqual((await bank.list({ offset: 1, limit: 2 })).map((r) => r.id), [ids[1], "it's"]);
  assert.deepEqual(await bank.list({ offset: 9 }), []);

  const got = await bank.get(['r5', 'nope', "it's", 'back\\slash']);
  assert.deepEqual(got.map((r) => r.id), ['r5', "it's", 'back\\slash']);
  assert.deepEqual(got[1]!.tokens, [5, 6, 3]);
  assert.equal(got[1]!.text, 'three');
  assert.deepEqual(got[1]!.memory, batch[2]!.memory);
  assert.deepEqual(decodeMemory(got[0]!.memory).k.length, 2 * 2 * 4 * 64);

  assert.equal(await bank.remove(["it's", 'nope', "it's"]), 1);
  assert.equal(await bank.remove([]), 0);
  assert.equal(await bank.count(), 4);
  assert.deepEqual(await bank.get(["it's"]), []);
  assert.deepEqual((await bank.list()).map((r) => r.text), ['one', 'two', 'four', 'five']);
  // a removed id can be added again, and lists last
  await bank.add([ref("it's", 'three again', 3)]);
  assert.deepEqual((await bank.list()).map((r) => r.text), ['one', 'two', 'four', 'five', 'three again']);
  bank.close();
});

test('add checks every reference before writing any: duplicate ids, bad blobs, text, tokens, vectors', async () => {
  const bank = await MemoryBank.open(fresh(), { model: MODEL, create: true });
  await bank.add([ref('x', 'existing')]);
  await rejectsWith(bank.add([ref('y', 'new'), ref('x', 'again')]), /1 id\(s\) already in the bank: 'x'; remove them first/);
  await rejectsWith(bank.add([ref('z', 'a'), ref('z', 'b')]), /id 'z' appears twice in the batch/);

  const corrupt = ref('c', 'corrupt blob');
  corrupt.memory[MEMORY_HEADER_BYTES + 10]! ^= 1;
  await rejectsWith(bank.add([ref('ok', 'fine'), corrupt]), /reference 1 \('c'\): memory: checksum mismatch .*corrupt/);
  await rejectsWith(bank.add([{ ...ref('t', 'truncated'), memory: ref('t', 't').memory.subarray(0, 100) }]), /memory: truncated/);
  const wrongShape = encodeMemory({ layers: 2, kvHeads: 2, tokens: 8, headDim: 64, dtype: 'bf16', k: new Float32Array(2048), v: new Float32Array(2048), positions: new Uint32Array(32) });
  await rejectsWith(bank.add([{ ...ref('s', 'shape'), memory: wrongShape }]), /memory has shape \(L 2, 2, Hkv 2, T 8, D 64\) bf16, but this bank holds \(L 2, 2, Hkv 2, T 4, D 64\) bf16/);
  await rejectsWith(bank.add([{ ...ref('e', 'x'), text: '  ' }]), /text must be a non-empty string/);
  await rejectsWith(bank.add([{ ...ref('e', 'x'), tokens: [] }]), /tokens must hold at least one token id/);
  await rejectsWith(bank.add([{ ...ref('e', 'x'), tokens: [1, -2] }]), /token id -2 is not an integer/);
  await rejectsWith(bank.add([{ ...ref('e', 'x'), vector: new Float32Array(4) }]), /this bank was made without vectors/);
  await rejectsWith(bank.add([ref('', 'x')]), /an id must be a non-empty string/);
  await rejectsWith(bank.add([ref('a\nb', 'x')]), /holds a control character/);
  // nothing of the failed batches was written
  assert.deepEqual((await bank.list()).map((r) => r.id), ['x']);
  bank.close();
});

test('search: BM25 finds the right fact among 50; a new fact is found by the next search, a removed one is gone at once', async () => {
  const dir = fresh();
  const bank = await MemoryBank.open(dir, { model: MODEL, create: true });
  await bank.add(FACTS);
  for (const i of [0, 17, 33, 49]) {
    const hits = await bank.search(`When was ${NAMES[i]} first recorded?`);
    assert.ok(hits.length >= 1 && hits.length <= 5);
    assert.equal(hits[0]!.id, `fact-${i}`, `query about ${NAMES[i]}`);
    assert.ok(hits.every((h, j) => j === 0 || h.score <= hits[j - 1]!.score));
  }
  assert.equal((await bank.search('mountain', { k: 20 })).length, 10);
  assert.equal((await bank.search('mountain', { k: 3 })).length, 3);
  assert.deepEqual(await bank.search('the of and'), [], 'stop words only');
  assert.deepEqual(await bank.search('   '), []);
  const excluded = await bank.search(`${NAMES[5]} river`, { exclude: ['fact-5'] });
  assert.ok(excluded.length > 0 && excluded.every((h) => h.id !== 'fact-5'));

  // another handle on the same bank, as a server process would hold it
  const server = await MemoryBank.open(dir, { model: MODEL });
  assert.deepEqual(await server.search('glorbnax'), []);
  await bank.add([ref('new-fact', 'The glorbnax of Vexmoor sings at dawn.', 77)]);
  for (const b of [bank, server]) {
    const hits = await b.search('What does the glorbnax do?');
    assert.equal(hits[0]?.id, 'new-fact');
    assert.equal(hits[0]?.text, 'The glorbnax of Vexmoor sings at dawn.');
  }
  assert.ok((await server.stats()).unindexed >= 1, 'the new fact is found although the index does not cover it yet');
  await server.remove(['new-fact']);
  for (const b of [bank, server]) assert.deepEqual(await b.search('What does the glorbnax do?'), []);
  assert.equal((await bank.search(`${NAMES[12]}`))[0]?.id, 'fact-12');
  server.close();
  bank.close();
});

test('the indexes are rebuilt: first add, more unindexed than indexed, reindexAfter; search is the same before and after', async () => {
  const bank = await MemoryBank.open(fresh(), { model: MODEL, create: true, reindexAfter: 30 });
  // the first add is indexed even when deferred: BM25 over an empty index ranks nothing right
  await bank.add(FACTS.slice(0, 20), { deferIndex: true });
  assert.deepEqual(await bank.stats(), { references: 20, unindexed: 0 });
  const before = await bank.search(`${NAMES[7]} machine`);
  assert.equal(before[0]!.id, 'fact-7');
  await bank.add(FACTS.slice(20, 25), { deferIndex: true });
  await bank.add(FACTS.slice(25, 30), { deferIndex: true });
  assert.deepEqual(await bank.stats(), { references: 30, unindexed: 10 });
  assert.equal((await bank.search(`${NAMES[27]}`))[0]!.id, 'fact-27', 'unindexed rows are searched');
  await bank.add(FACTS.slice(30, 40));
  assert.deepEqual(await bank.stats(), { references: 40, unindexed: 20 });
  await bank.add(FACTS.slice(40, 41)); // 21 unindexed > 20 indexed
  assert.deepEqual(await bank.stats(), { references: 41, unindexed: 0 });
  await bank.add(fillerRefs(MODEL, 29, 'f'));
  assert.deepEqual(await bank.stats(), { references: 70, unindexed: 29 });
  await bank.add(FACTS.slice(41, 42)); // 30 unindexed: reindexAfter
  assert.deepEqual(await bank.stats(), { references: 71, unindexed: 0 });
  assert.equal((await bank.search(`${NAMES[7]} machine`))[0]!.id, 'fact-7');
  await bank.add(FACTS.slice(42, 45));
  assert.deepEqual(await bank.stats(), { references: 74, unindexed: 3 });
  await bank.reindex();
  assert.deepEqual(await bank.stats(), { references: 74, unindexed: 0 });
  await bank.remove(['fact-43']);
  await bank.optimize();
  assert.deepEqual(await bank.stats(), { references: 73, unindexed: 0 });
  assert.equal((await bank.search(`${NAMES[44]}`))[0]!.id, 'fact-44');
  assert.deepEqual(await bank.search(`${NAMES[43]}`), []);
  bank.close();
});

test('equal scores rank by id, so a reference removed and added back ranks where it did', async () => {
  const bank = await MemoryBank.open(fresh(), { model: MODEL, create: true });
  // 12 statements that score alike for 'Norland' (one match each, the same length), added out of id order
  const order = [7, 2, 11, 0, 5, 9, 1, 3, 10, 6, 4, 8];
  await bank.add(order.map((i) => ref(`tie-${String(i).padStart(2, '0')}`, `Norland harbour number ${NAMES[i]}.`, 300 + i)));
  await bank.add(FACTS.slice(0, 10));
  const ids = async () => (await bank.search('Norland', { k: 3 })).map((h) => h.id);
  assert.deepEqual(await ids(), ['tie-00', 'tie-01', 'tie-02']);
  const [again] = await bank.get(['tie-01']);
  await bank.remove(['tie-01']);
  assert.deepEqual(await ids(), ['tie-00', 'tie-02', 'tie-03']);
  await bank.add([{ ...again!, id: 'tie-01' }]);
  await bank.reindex();
  assert.deepEqual(await ids(), ['tie-00', 'tie-01', 'tie-02'], 'stored last, ranked as before');
  bank.close();
});

test('vectors: reciprocal rank fusion moves up what the vector points at', async () => {
  const model: BankModel = { ...MODEL, fingerprint: 'test-model-v', vectorDim: 4 };
  const bank = await MemoryBank.open(fresh(), { model, create: true });
  const e = (x: number, y: number, z: number, w: number) => Float32Array.of(x, y, z, w);
  const r = (id: string, text: string, vector: Float32Array, seed: number): NewReference => ({ id, text, tokens: [1], memory: randomMemory(model, seed), vector });
  await bank.add([
    r('A', 'lantern lantern lantern: the lantern room', e(-1, 0, 0, 0), 1),
    r('B', 'an old lantern in the hall among many other things', e(1, 0, 0, 0), 2),
    r('C', 'a quiet harbour at night', e(0.1, 1, 0, 0), 3),
    r('D', 'a map of the northern coast', e(0, 0, 1, 0), 4),
    r('E', 'a bell tower by the sea', e(0.5, 0, 0.3, 1), 5),
  ]);
  const plain = await bank.search('lantern');
  assert.deepEqual(plain.map((h) => h.id), ['A', 'B']);
  // the vector points at B (cosine 1) and away from A (cosine -1). BM25 ranks A, B; the vector B, E, C, D, A
  const fused = await bank.search('lantern', { vector: e(1, 0, 0, 0) });
  assert.deepEqual(fused.map((h) => h.id), ['B', 'A', 'E', 'C', 'D']);
  const rrf = (...ranks: number[]) => ranks.reduce((s, rank) => s + 1 / (RRF_K + rank), 0);
  assert.ok(Math.abs(fused[0]!.score - rrf(2, 1)) < 1e-12);
  assert.ok(Math.abs(fused[1]!.score - rrf(1, 5)) < 1e-12);
  assert.ok(Math.abs(fused[2]!.score - rrf(2)) < 1e-12);
  // no BM25 match at all: the vector ranking alone
  assert.deepEqual((await bank.search('zeppelin', { vector: e(0, 0, 1, 0), k: 2 })).map((h) => h.id), ['D', 'E']);
  assert.deepEqual((await bank.search('lantern', { vector: e(1, 0, 0, 0), exclude: ['B'], k: 2 })).map((h) => h.id), ['A', 'E']);

  await rejectsWith(bank.add([{ ...r('F', 'f', e(1, 0, 0, 0), 6), vector: undefined as unknown as Float32Array }]), /has no vector; every reference of this bank needs one of 4 values/);
  await rejectsWith(bank.add([r('F', 'f', Float32Array.of(1, 2, 3), 6)]), /vector must be a Float32Array of 4 values, got 3/);
  await rejectsWith(bank.add([r('F', 'f', e(0, 0, 0, 0), 6)]), /is all zeros/);
  await rejectsWith(bank.search('x', { vector: e(NaN, 0, 0, 0) }), /query vector holds a non-finite value/);
  const plainBank = await MemoryBank.open(fresh(), { model: MODEL, create: true });
  await rejectsWith(plainBank.search('x', { vector: e(1, 0, 0, 0) }), /this bank was made without vectors/);
  plainBank.close();
  bank.close();
});

test('a writer killed (SIGKILL) in the middle of a large add leaves the previous bank, which opens, searches and takes adds', async () => {
  const dir = fresh();
  const before = await MemoryBank.open(dir, { model: MODEL, create: true });
  await before.add([...fillerRefs(MODEL, 20, 'pre'), ...FACTS.slice(0, 5)]);
  before.close();
  const data = join(dir, 'refs.lance', 'data');
  const filesBefore = new Set(readdirSync(data));

  // the child writes 20,000 references (80 MB of memories) in one add; kill it as soon as LanceDB starts
  // writing their data file (a temp file in data/, renamed into place once complete, before the commit)
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, dir, '20000'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let stderr = '';
  let writing = false;
  const watcher = watch(data, (_, name) => {
    if (writing && name?.startsWith('.tmp')) child.kill('SIGKILL');
  });
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    out += s;
    if (out.includes('writing\n')) writing = true;
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  watcher.close();
  assert.ok(writing, `the child never started writing (exit ${code}): ${stderr.slice(-2000)}`);
  assert.equal(signal, 'SIGKILL', `the child finished before it was killed (${out.trim()}): give it a bigger batch`);
  assert.ok(!out.includes('written'));
  assert.ok([...readdirSync(data)].some((f) => !filesBefore.has(f)), 'the killed write left a partial data file behind');

  const bank = await MemoryBank.open(dir, { model: MODEL });
  assert.equal(await bank.count(), 25);
  assert.deepEqual(await bank.get(['big0']), []);
  assert.equal((await bank.search(`${NAMES[3]}`))[0]?.id, 'fact-3');
  assert.equal((await bank.list({ limit: 1000 })).length, 25);
  await bank.add([ref('after', 'The crash survivor sings.', 5), ...FACTS.slice(5, 10)]);
  assert.equal(await bank.count(), 31);
  assert.equal((await bank.search('crash survivor'))[0]?.id, 'after');
  assert.deepEqual(decodeMemory((await bank.get(['pre7']))[0]!.memory), decodeMemory(fillerRefs(MODEL, 8, 'pre')[7]!.memory));
  bank.close();
});
