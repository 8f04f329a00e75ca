// the loss curve: a real PNG of the requested size, both series named in the legend, a run
// without validation drawn alone, and nothing to draw refused with a clear error.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EngramError } from '../gpu/errors.ts';
import { lossCurvePng, lossCurveSvg, writeLossCurve, type CurvePoint } from './plot.ts';

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** a decaying loss per step, with validation every 10 steps when `val` */
function run(steps: number, val: boolean): CurvePoint[] {
  return Array.from({ length: steps }, (_, i) => {
    const step = i + 1;
    const loss = 2 + 6 * Math.exp(-step / 20) + 0.1 * Math.sin(step);
    return val && step % 10 === 0 ? { step, loss, valLoss: loss + 0.2 } : { step, loss };
  });
}

/** the PNG's width and height from its IHDR chunk (right after the signature, big-endian) */
function ihdrSize(png: Uint8Array): { width: number; height: number } {
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  assert.equal(new TextDecoder().decode(png.subarray(12, 16)), 'IHDR');
  return { width: v.getUint32(16), height: v.getUint32(20) };
}

test('lossCurvePng gives a PNG of the requested width and height', async () => {
  const png = await lossCurvePng(run(60, true), { title: 'test run', width: 640, height: 360 });
  assert.deepEqual([...png.subarray(0, 8)], PNG_SIGNATURE);
  assert.deepEqual(ihdrSize(png), { width: 640, height: 360 });
});

test('the SVG names both series in its legend and carries the title', async () => {
  const svg = await lossCurveSvg(run(40, true), { title: 'tiny run' });
  assert.match(svg, /training loss/);
  assert.match(svg, /validation loss/);
  assert.match(svg, /tiny run/);
});

test('a run with training points only is drawn, with one series and the default size', async () => {
  const points = run(30, false);
  const svg = await lossCurveSvg(points);
  assert.match(svg, /training loss/);
  assert.doesNotMatch(svg, /validation loss/);
  assert.deepEqual(ihdrSize(await lossCurvePng(points)), { width: 800, height: 450 });
});

test('no finite loss to draw, or a bad size, throws an EngramError saying so', async () => {
  await assert.rejects(lossCurvePng([]), (e: unknown) => e instanceof EngramError && /nothing to draw/.test(e.message));
  await assert.rejects(lossCurvePng([{ step: 1, loss: NaN }, { step: 2 }]), EngramError);
  await assert.rejects(lossCurvePng(run(5, false), { width: 0 }), (e: unknown) => e instanceof EngramError && /width 0/.test(e.message));
});

test('writeLossCurve writes the PNG and leaves no temporary file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'engram-plot-'));
  try {
    const path = join(dir, 'loss.png');
    await writeLossCurve(path, run(20, true), { width: 300, height: 200 });
    const png = new Uint8Array(readFileSync(path));
    assert.deepEqual(ihdrSize(png), { width: 300, height: 200 });
    assert.equal(existsSync(`${path}.tmp`), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
