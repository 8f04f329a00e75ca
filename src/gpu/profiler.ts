// KernelProfiler: GPU time per kernel name, from timestamp queries. While attached, every
// dispatch gets a compute pass of its own that writes a start and an end timestamp, so the
// figures include no host time, but each dispatch loses the overlap it would have had with its
// neighbours (on a GPU the sum over kernels exceeds the step's time; on a CPU adapter, which
// runs one dispatch at a time, it is close). For finding where time goes, not for benchmarks.
//
//   const prof = KernelProfiler.attach(gpu);   ... work ...   const table = await prof.report();

import type { Gpu } from './device.ts';
import { EngramError } from './errors.ts';

const QUERIES = 4096; // timestamps per resolve block (2 per dispatch)

export interface KernelTime {
  name: string;
  dispatches: number;
  ms: number;
}

export class KernelProfiler {
  private readonly querySet: GPUQuerySet;
  private names: string[] = [];
  private readonly blocks: { buffer: GPUBuffer; names: string[] }[] = [];

  private constructor(private readonly gpu: Gpu) {
    if (!gpu.features.timestamps) throw new EngramError(`KernelProfiler: adapter '${gpu.adapterName}' has no timestamp-query feature`);
    this.querySet = gpu.device.createQuerySet({ label: 'profiler', type: 'timestamp', count: QUERIES });
  }

  static attach(gpu: Gpu): KernelProfiler {
    const p = new KernelProfiler(gpu);
    gpu.beforeDispatch = (name) => p.next(name);
    return p;
  }

  private next(name: string): void {
    if (this.names.length * 2 === QUERIES) this.resolveBlock();
    const i = this.names.length * 2;
    this.names.push(name);
    this.gpu.setNextPassTimestamps({ querySet: this.querySet, beginningOfPassWriteIndex: i, endOfPassWriteIndex: i + 1 });
  }

  private resolveBlock(): void {
    const n = this.names.length * 2;
    if (n === 0) return;
    const buffer = this.gpu.createBuffer('profiler', QUERIES * 8, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC);
    // the pass that holds the last dispatch must end before its timestamps resolve
    this.gpu.encode((enc) => enc.resolveQuerySet(this.querySet, 0, n, buffer, 0));
    this.blocks.push({ buffer, names: this.names });
    this.names = [];
  }

  /** Detaches, waits for the recorded work, and returns the time per kernel, largest first. */
  async report(): Promise<KernelTime[]> {
    this.gpu.beforeDispatch = null;
    this.resolveBlock();
    const by = new Map<string, KernelTime>();
    for (const b of this.blocks) {
      const t = new BigUint64Array(await this.gpu.readBytes(b.buffer, 0, b.names.length * 16));
      b.names.forEach((name, i) => {
        const e = by.get(name) ?? { name, dispatches: 0, ms: 0 };
        e.dispatches++;
        e.ms += Number(t[2 * i + 1]! - t[2 * i]!) / 1e6;
        by.set(name, e);
      });
      this.gpu.destroyBuffer(b.buffer);
    }
    this.querySet.destroy();
    return [...by.values()].sort((a, b) => b.ms - a.ms);
  }
}

/** the report as aligned text lines */
export function formatProfile(rows: readonly KernelTime[]): string {
  const total = rows.reduce((s, r) => s + r.ms, 0);
  const w = Math.max(...rows.map((r) => r.name.length), 6);
  return [
    `${'kernel'.padEnd(w)}  dispatches        ms      %`,
    ...rows.map((r) => `${r.name.padEnd(w)}  ${String(r.dispatches).padStart(10)}  ${r.ms.toFixed(2).padStart(8)}  ${((100 * r.ms) / total).toFixed(1).padStart(5)}`),
    `${'total'.padEnd(w)}  ${String(rows.reduce((s, r) => s + r.dispatches, 0)).padStart(10)}  ${total.toFixed(2).padStart(8)}`,
  ].join('\n');
}
