// GPU timing with timestamp queries: begin() closes the open compute pass and makes the next
// one write a start and an end timestamp; end() closes it. everything dispatched in between
// must land in that one pass, so a flush inside the region (a full uniform staging block, a
// write or a read) invalidates it, and read() says so.

import type { Gpu } from './device.ts';
import { EngramError } from './errors.ts';

export class GpuTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolve: GPUBuffer;
  private open = false;
  private startDispatches = 0;
  private startFlushes = 0;

  constructor(private readonly gpu: Gpu) {
    if (!gpu.features.timestamps) {
      throw new EngramError(`GpuTimer: adapter '${gpu.adapterName}' has no timestamp-query feature; time with wall clock and gpu.sync()`);
    }
    this.querySet = gpu.device.createQuerySet({ label: 'timer', type: 'timestamp', count: 2 });
    this.resolve = gpu.createBuffer('timer', 16, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC);
  }

  begin(): void {
    this.gpu.flush();
    this.gpu.setNextPassTimestamps({ querySet: this.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 });
    this.open = true;
    this.startDispatches = this.gpu.dispatches;
    this.startFlushes = this.gpu.flushes;
  }

  /** Closes the region. Returns the region's GPU time in milliseconds. */
  async end(): Promise<number> {
    if (!this.open) throw new EngramError('GpuTimer.end() without begin()');
    this.open = false;
    if (this.gpu.dispatches === this.startDispatches) throw new EngramError('GpuTimer: no dispatch between begin() and end()');
    if (this.gpu.flushes !== this.startFlushes) {
      throw new EngramError('GpuTimer: the timed region was split by a flush (a write, read or full uniform block inside it)');
    }
    this.gpu.endPass();
    this.gpu.encode((enc) => enc.resolveQuerySet(this.querySet, 0, 2, this.resolve, 0));
    const bytes = await this.gpu.readBytes(this.resolve, 0, 16);
    const [t0, t1] = new BigUint64Array(bytes);
    if (t0 === undefined || t1 === undefined || t1 < t0) {
      throw new EngramError(`GpuTimer: timestamps out of order (${t0}, ${t1})`);
    }
    return Number(t1 - t0) / 1e6;
  }

  dispose(): void {
    this.querySet.destroy();
    this.gpu.destroyBuffer(this.resolve);
  }
}
