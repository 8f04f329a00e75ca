// npm run bench -- <suite> [options]: runs one benchmark suite and writes its result file.
// suites live in bench/suites/<suite>.ts and export `run(gpu, args)`.

import { Gpu } from '../src/gpu/device.ts';
import { deviceName, table, writeResults } from './lib.ts';

export interface SuiteOutput {
  results: Record<string, number>;
  notes?: Record<string, string>;
  /** the device the figures belong to, when not the adapter (a CPU-only suite) */
  device?: string;
  /** a part of a run (a stage saved for the next command): printed, but it writes no result file, so it never replaces the suite's */
  partial?: boolean;
}
export type Suite = (gpu: Gpu, args: string[]) => Promise<SuiteOutput>;

const SUITES: Record<string, () => Promise<{ run: Suite }>> = {
  kernels: () => import('./suites/kernels.ts'),
  memory: () => import('./suites/memory.ts'),
  train: () => import('./suites/train.ts'),
  tokenizer: () => import('./suites/tokenizer.ts'),
  demo: () => import('./suites/demo.ts'),
  explicit: () => import('./suites/explicit.ts'),
  explicit_retrieval: () => import('./suites/explicit_retrieval.ts'),
  serve: () => import('./suites/serve.ts'),
  multigpu: () => import('./suites/multigpu.ts'),
};

async function main(): Promise<void> {
  const [name, ...args] = process.argv.slice(2);
  const load = name ? SUITES[name] : undefined;
  if (!load) {
    console.error(`usage: npm run bench -- <suite>   (suites: ${Object.keys(SUITES).join(', ')})`);
    process.exit(2);
  }
  const gpu = await Gpu.create();
  console.log(`adapter: ${gpu.adapterName}`);
  try {
    const { run } = await load();
    const out = await run(gpu, args);
    const path = out.partial ? null : writeResults(name!, out.device ?? deviceName(gpu), out.results, out.notes);
    console.log(table(out.results));
    if (out.notes) for (const [k, v] of Object.entries(out.notes)) console.log(`note ${k}: ${v}`);
    console.log(path ? `wrote ${path}` : 'a part of a run: no result file written');
  } finally {
    gpu.destroy();
  }
}

await main();
