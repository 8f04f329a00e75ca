// `engram data --reading N`: the corpus gets N reading documents about invented facts, in train only
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { splitDocuments } from '../data/corpus.ts';
import { dataCommand } from './commands.ts';

test('engram data --reading writes reading documents into train.txt only, and token files for them', async () => {
  const out = await mkdtemp(join(tmpdir(), 'engram-data-'));
  try {
    await dataCommand({ out, maxMb: 0.05, vocab: 512, seed: 0, reading: 12 });
    const train = splitDocuments(await readFile(join(out, 'train.txt'), 'utf8'));
    const val = splitDocuments(await readFile(join(out, 'val.txt'), 'utf8'));
    // practice 0: the only question lines are the reading documents' (6 statements, then 3 questions and answers)
    const reading = train.filter((d) => d.includes('\nQ: '));
    assert.equal(reading.length, 12);
    for (const d of reading) assert.equal(d.split('\n').length, 12, d);
    assert.ok(val.every((d) => !d.includes('\nQ: ')));
    const bin = await readFile(join(out, 'train.bin'));
    assert.ok(bin.byteLength > 0 && bin.byteLength % 4 === 0);
    await assert.rejects(dataCommand({ out, maxMb: 0.05, vocab: 512, seed: 0, reading: 1.5 }), /reading must be an integer >= 0/);
    await assert.rejects(dataCommand({ out, maxMb: 0.05, vocab: 512, seed: 0, reading: 12, readingGroup: 5 }), /readingGroup must divide a reading document's 6 facts/);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
