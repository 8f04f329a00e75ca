import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gradNorm } from './gradnorm.ts';

test('reference gradNorm: norm over several tensors and the clip coefficient', () => {
  // 3^2 + 4^2 + 12^2 = 169
  const { norm, scale } = gradNorm([[3], [4, 0], [-12]], 6.5);
  assert.equal(norm, 13);
  assert.ok(Math.abs(scale - 6.5 / (13 + 1e-6)) < 1e-15);
  assert.equal(gradNorm([[3], [4]], 100).scale, 1);
  assert.equal(gradNorm([]).norm, 0);
  assert.equal(gradNorm([]).scale, 1);
});
