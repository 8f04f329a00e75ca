// the training progress display: without a TTY, plain throttled lines that never drop a
// validation or save; on a (fake) terminal, a cli-progress bar with messages above it.

import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import type { LogLine } from '../train/loop.ts';
import { formatEta, formatRate, TrainProgress, type ProgressStream } from './progress.ts';

const ESC = '\x1b';

/** a stream that keeps what is written to it, a terminal or not */
function fakeStream(isTTY: boolean): { stream: ProgressStream; text: () => string } {
  let text = '';
  const w = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream: Object.assign(w, { isTTY, columns: 120 }), text: () => text };
}

/** step s of `steps`, with validation every `evalEvery` and a save every `saveEvery` */
function line(s: number, steps: number, evalEvery = 0, saveEvery = 0): LogLine {
  const l: LogLine = { step: s, steps, loss: 5 - s / 100, lrFactor: 1, tokensPerSecond: 12345, etaSeconds: steps - s };
  if (evalEvery && s % evalEvery === 0) Object.assign(l, { valLoss: 4 - s / 100, memory: [{ usage: 0.42, kl: 0.12, entropy: 1, reads: 64 }, { usage: 0.375, kl: 0.3, entropy: 1, reads: 64 }] });
  if (saveEvery && s % saveEvery === 0) l.saved = 'runs/x';
  return l;
}

test('formatEta and formatRate', () => {
  assert.deepEqual([42, 185, 7620, Infinity].map(formatEta), ['42s', '3m05s', '2h07m', '?']);
  assert.deepEqual([850, 12345, 1_250_000].map(formatRate), ['850', '12.3k', '1.25M']);
});

test('without a TTY: a plain line every `every` steps and the last, and every validation and save', () => {
  const { stream, text } = fakeStream(false);
  const p = new TrainProgress({ total: 100, start: 0, stream, every: 10, now: () => 0 });
  for (let s = 1; s <= 100; s++) p.update(line(s, 100, 25, 50));
  p.stop();
  const out = text();
  assert.ok(!out.includes('\r') && !out.includes(ESC), 'no carriage returns or escape sequences in a log');
  const lines = out.trimEnd().split('\n');
  const progress = lines.filter((x) => / loss \d/.test(x) && !x.includes('validation'));
  assert.deepEqual(progress.map((x) => Number(/step +(\d+)/.exec(x)?.[1])), [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]);
  assert.equal(progress[0], 'step   1/100 loss 4.990 | lr x1.00 | 12.3k tok/s | eta 1m39s');
  // after the first validation, every line carries the last val loss and the slot usage
  assert.equal(progress[3], 'step  31/100 loss 4.690 | lr x1.00 | 12.3k tok/s | eta 1m09s | val 3.750 | mem 42.0% 37.5%');
  const vals = lines.filter((x) => x.includes('validation loss'));
  assert.deepEqual(vals.map((x) => Number(/step +(\d+)/.exec(x)?.[1])), [25, 50, 75, 100]);
  assert.equal(vals[0], 'step  25/100 validation loss 3.750 | memory usage 42.0% 37.5% KL 0.12 0.30');
  assert.deepEqual(lines.filter((x) => x.includes('saved')), ['step  50/100 saved checkpoint to runs/x', 'step 100/100 saved checkpoint to runs/x']);
});

test('without a TTY: a line at least every intervalMs, and stop() prints the last step', () => {
  const { stream, text } = fakeStream(false);
  let clock = 0;
  const p = new TrainProgress({ total: 1000, start: 200, stream, every: 1000, intervalMs: 5000, now: () => clock });
  for (let s = 201; s <= 220; s++, clock += 1000) p.update(line(s, 1000));
  p.message('stopping: saving a checkpoint after this step');
  p.stop();
  p.stop();
  const steps = text()
    .trimEnd()
    .split('\n')
    .map((x) => /^step +(\d+)/.exec(x)?.[1] ?? x);
  assert.deepEqual(steps, ['201', '206', '211', '216', 'stopping: saving a checkpoint after this step', '220']);
});

test('tty: false gives plain lines on a terminal too', () => {
  const { stream, text } = fakeStream(true);
  const p = new TrainProgress({ total: 3, start: 0, stream, tty: false });
  for (let s = 1; s <= 3; s++) p.update(line(s, 3));
  p.stop();
  assert.equal(text().split('\n').length, 4);
  assert.ok(!text().includes(ESC));
});

test('on a terminal: a cli-progress bar, with validation lines and messages printed above it', () => {
  const { stream, text } = fakeStream(true);
  const p = new TrainProgress({ total: 10, start: 0, stream });
  for (let s = 1; s <= 10; s++) p.update(line(s, 10, 5));
  p.message('hello from the trainer');
  p.stop();
  const out = text();
  assert.match(out, /█+.* 10\/10 \| loss 4\.900 \| 12\.3k tok\/s \| eta 0s \| val 3\.900 \| mem 42\.0% 37\.5%/);
  // each message clears the bar's line first
  assert.ok(out.includes(`\r${ESC}[2Kstep  5/10 validation loss 3.950`));
  assert.ok(out.includes(`\r${ESC}[2Khello from the trainer\n`));
  assert.ok(out.endsWith('\n'), 'stop() leaves the cursor on a fresh line');
});
