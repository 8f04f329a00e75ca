import assert from 'node:assert/strict';
import { test } from 'node:test';
import { adamwStep } from './adamw.ts';

// a hand-worked single element (golden files from torch.optim.AdamW come with the model tests)
test('reference adamw matches a hand-worked example over two steps', () => {
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-15 * Math.abs(b), `${a} != ${b}`);
  const p = Float64Array.of(1);
  const m = Float64Array.of(0);
  const v = Float64Array.of(0);
  const h = { lr: 0.1, weightDecay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
  // step 1, g = 0.5:  p = 1 * (1 - 0.001) = 0.999;  m = 0.05;  v = 0.00025
  //   m^ = 0.05 / 0.1 = 0.5;  v^ = 0.00025 / 0.001 = 0.25;  p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8)
  adamwStep(p, [0.5], m, v, { ...h, step: 1 });
  close(m[0]!, 0.05);
  close(v[0]!, 0.00025);
  close(p[0]!, 0.999 - 0.05 / 0.50000001);
  // step 2, g = -0.25 with gradScale 2, so g = -0.5:  p = p1 * 0.999;  m = 0.045 - 0.05 = -0.005
  //   v = 0.00024975 + 0.00025 = 0.00049975;  m^ = -0.005 / 0.19;  v^ = 0.00049975 / 0.001999 = 0.25
  //   p = p1 * 0.999 + 0.1 * (0.005 / 0.19) / (0.5 + 1e-8)
  const p1 = p[0]!;
  adamwStep(p, [-0.25], m, v, { ...h, step: 2, gradScale: 2 });
  close(m[0]!, -0.005);
  close(v[0]!, 0.00049975);
  close(p[0]!, p1 * 0.999 + (0.1 * (0.005 / 0.19)) / 0.50000001);
  close(p[0]!, 0.9033641597874736);
});

test('reference adamw: zero gradient and no decay leaves parameters unchanged', () => {
  const p = Float64Array.of(3, -2);
  adamwStep(p, [0, 0], new Float64Array(2), new Float64Array(2), { lr: 1e-3, weightDecay: 0, beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 1 });
  assert.deepEqual([...p], [3, -2]);
});
