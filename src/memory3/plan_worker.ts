// one worker of planRetrievalParallel (plan_parallel.ts): plans chunks [from, to) and posts them back.

import { parentPort, workerData } from 'node:worker_threads';
import { planChunks, type RetrievalPlanOptions } from './bm25.ts';

const d = workerData as { stream: Uint32Array; refs: number[][]; o: RetrievalPlanOptions; from: number; to: number };
const plan = planChunks(d.stream, d.refs, d.o, d.from, d.to);
parentPort!.postMessage(plan, [plan.buffer as ArrayBuffer]);
