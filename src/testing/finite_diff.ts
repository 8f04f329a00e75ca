// central finite differences of a GPU loss against the analytic gradients already in the
// parameters' .grad, entry by entry (tests of gradient paths too long for a float64 reference:
// Memory³'s gradients through a memory's encoding). f32 on the GPU: eps 4e-3 and a 5% tolerance.

import assert from 'node:assert/strict';
import type { Gpu } from '../gpu/device.ts';
import type { Param } from '../model/param.ts';

/** the indices of p's k largest gradient entries (among those `keep` accepts) */
export async function largestGradients(gpu: Gpu, p: Param, k: number, keep: (i: number) => boolean = () => true): Promise<number[]> {
  const g = (await gpu.read(p.grad)) as Float32Array;
  return [...g.keys()].filter(keep).sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!)).slice(0, k);
}

/**
 * checks each (param, index)'s analytic gradient against (loss(w + eps) - loss(w - eps)) / 2 eps;
 * entries whose both values are too small to tell apart in f32 are skipped, and at least
 * `atLeast` must be checked. `what` names the case in failures
 */
export async function checkAgainstFiniteDifferences(
  gpu: Gpu,
  checks: readonly { p: Param; index: number }[],
  loss: () => Promise<number>,
  o: { what: string; atLeast: number; eps?: number },
): Promise<void> {
  const eps = o.eps ?? 4e-3;
  let checked = 0;
  for (const { p, index } of checks) {
    const analytic = ((await gpu.read(p.grad)) as Float32Array)[index]!;
    const w = (await gpu.read(p.value)) as Float32Array;
    const at = w[index]!;
    w[index] = at + eps;
    gpu.write(p.value, w);
    const up = await loss();
    w[index] = at - eps;
    gpu.write(p.value, w);
    const down = await loss();
    w[index] = at;
    gpu.write(p.value, w);
    const numeric = (up - down) / (2 * eps);
    if (Math.abs(numeric) < 1e-4 && Math.abs(analytic) < 2e-4) continue;
    checked++;
    assert.ok(Math.abs(analytic - numeric) <= 0.05 * Math.abs(numeric) + 2e-4, `${o.what}: ${p.name}[${index}]: analytic ${analytic}, finite differences ${numeric}`);
  }
  assert.ok(checked >= o.atLeast, `${o.what}: only ${checked} gradients large enough to check`);
}
