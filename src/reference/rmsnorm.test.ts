import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { rmsnormBackward, rmsnormForward } from './rmsnorm.ts';

test('reference rmsnorm backward matches finite differences', () => {
  const rng = new Rng(1);
  const [N, C, eps] = [3, 7, 1e-5];
  const x = rng.normals(N * C);
  const w = rng.normals(C, 0.5, 1);
  const g = rng.normals(N * C);
  const { rstd } = rmsnormForward(x, w, N, C, eps);
  const { dx, dw } = rmsnormBackward(g, x, w, rstd, N, C);
  gradCheck('rmsnorm', { x, w }, { x: dx, w: dw }, () => dot(rmsnormForward(x, w, N, C, eps).out, g));
});
