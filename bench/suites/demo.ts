// suite `demo`: `engram demo` timed end to end, for the record of what the one-command pipeline
// does on a machine (data, tokenizer, training, questions). run it where it is meant to run:
// `npm run bench -- demo` on a 2-core machine without a GPU (lavapipe), `npm run bench -- demo
// --gpu` on a GPU.
//   demo_minutes              wall time of the whole command (the bar on 2 cores: < 10)
//   demo_taught_exact         exact-match share of questions whose Q/A form was trained
//   demo_held_out_exact       exact-match share of questions about facts only read as statements
//   demo_train_tok_s          training tokens per second (the run's mean, from its history)
// the run folder is a temporary one, removed afterwards.

import { cpus } from 'node:os';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu } from '../../src/gpu/device.ts';
import { demoCommand } from '../../src/cli/demo.ts';
import type { SuiteOutput } from '../run.ts';

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const onGpu = args.includes('--gpu');
  const dir = mkdtempSync(join(tmpdir(), 'engram-demo-'));
  try {
    const t0 = performance.now();
    const r = await demoCommand({ out: dir, gpu: onGpu, steps: null, maxMinutes: onGpu ? 5 : 8, seed: 0 });
    const minutes = (performance.now() - t0) / 60000;
    return {
      results: { demo_minutes: minutes, demo_taught_exact: r.taught, demo_held_out_exact: r.heldOut, demo_train_tok_s: r.trainTokS },
      notes: {
        machine: `${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, adapter ${gpu.adapterName}`,
        questions: `taught ${r.asked.taught}, held out ${r.asked.heldOut} (sampled evenly from the drill's questions)`,
        plan: r.plan,
      },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
