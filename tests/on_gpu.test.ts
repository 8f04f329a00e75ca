// scripts/on_gpu.sh, where it can be checked without several NVIDIA GPUs: bad use is refused with
// a message naming what is wrong. (what it does on a multi-GPU host: scripts/probe_gpu_select.sh,
// bench/results/gpu_select_probe-nvidia-h200-x2-20261123.txt.)
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test } from 'node:test';

const run = (...args: string[]) => spawnSync('bash', ['scripts/on_gpu.sh', ...args], { encoding: 'utf8' });

test('on_gpu.sh: usage without a command; a GPU index the host does not have is named', () => {
  const usage = run('0');
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /usage: scripts\/on_gpu.sh <gpu index> <command>/);
  const idx = existsSync('/dev/nvidia7') ? '97' : '7';
  const missing = run(idx, 'true');
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, new RegExp(`there is no /dev/nvidia${idx}`));
});
