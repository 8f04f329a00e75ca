// planRetrieval (bm25.ts) over worker threads: Memory³ training plans every 64-token chunk of its
// stream (47,000 chunks against 69,000 references in the explicit suite: a minute on one core).
// the chunks are split into contiguous ranges, one per worker; each worker builds its own index
// and plans its range (planChunks), so the plan is exactly planRetrieval's. Node only (worker
// threads); engram's TypeScript runs through tsx, so each worker loads tsx first.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { planRetrieval, type RetrievalPlanOptions } from './bm25.ts';

/** a worker's code: registers tsx (as bin/engram.js does), then runs plan_worker.ts */
const BOOT = `(async () => {
  const { register } = await import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))});
  register();
  await import(${JSON.stringify(new URL('./plan_worker.ts', import.meta.url).href)});
})().catch((e) => { throw e; });`;

/** chunks below which one thread plans alone (a worker's start and index cost more) */
const MIN_CHUNKS_PER_WORKER = 2048;

/** planRetrieval(stream, refs, o), on up to `threads` worker threads (default: the machine's cores, at most 16) */
export async function planRetrievalParallel(stream: Uint32Array, refs: readonly (readonly number[])[], o: RetrievalPlanOptions = {}, threads = Math.min(16, availableParallelism())): Promise<Int32Array> {
  const chunk = o.chunk ?? 64;
  const n = Math.floor(stream.length / chunk);
  const workers = Math.max(1, Math.min(threads, Math.floor(n / MIN_CHUNKS_PER_WORKER)));
  if (workers === 1) return planRetrieval(stream, refs, o);
  const per = o.perChunk ?? 1;
  const shared = new Uint32Array(new SharedArrayBuffer(stream.byteLength));
  shared.set(stream);
  const bounds = Array.from({ length: workers + 1 }, (_, w) => Math.round((w * n) / workers));
  const parts = await Promise.all(
    bounds.slice(0, -1).map(
      (from, w) =>
        new Promise<Int32Array>((resolve, reject) => {
          const worker = new Worker(BOOT, { eval: true, workerData: { stream: shared, refs, o, from, to: bounds[w + 1]! } });
          worker.once('message', (plan: Int32Array) => {
            resolve(plan);
            void worker.terminate();
          });
          worker.once('error', reject);
          worker.once('exit', (code) => code !== 0 && reject(new Error(`planRetrievalParallel: worker ${w} exited with ${code}`)));
        }),
    ),
  );
  const plan = new Int32Array(n * per);
  parts.forEach((p, w) => plan.set(p, bounds[w]! * per));
  return plan;
}

