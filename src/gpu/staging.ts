// host-visible buffers kept for the host's reads and writes of GPU memory (Gpu.readBytes,
// readView, writeBytes and the rest).
//
// a fresh MAP_READ buffer, or the fresh staging memory Dawn's queue.writeBuffer takes for a large
// write, costs its allocation and clearing every time: on an H100 through Dawn a 16 MiB read back
// ran at 0.88 GB/s through a fresh buffer and 7.2 GB/s through a kept one, an upload at 1.15 GB/s
// through writeBuffer and 7.2 GB/s through a kept mapped buffer (scripts/host_transfer_probe.ts;
// bench/results/host_transfer_probe-*.txt). so buffers are kept: sizes are rounded up to a power of
// two (at least 4 KiB) so that the reads of one size class share buffers, and a pool keeps at most
// `cap` bytes, dropping the buffers given back longest ago.
//
//   read pool   MAP_READ | COPY_DST, unmapped while free: take, copy into it, map, read, unmap, give
//   write pool  MAP_WRITE | COPY_SRC, mapped while free (mappedAtCreation when new; after each copy's
//               submit a mapAsync(WRITE) gives it back once the copy is done): take, set, unmap, copy
//
// staging buffers are host memory: they are not counted in Gpu.memory()'s device bytes, but in
// its `staging`. Gpu.destroy() destroys them with the device.

const MIN_BYTES = 4096;

/** the size class of a request: the power of two at least `bytes` (and 4 KiB) */
export function stagingSize(bytes: number): number {
  return Math.max(MIN_BYTES, 2 ** Math.ceil(Math.log2(Math.max(1, bytes))));
}

export class StagingPool {
  /** free buffers by size class, the most recently given last */
  private readonly free = new Map<number, GPUBuffer[]>();
  /** every free buffer, in the order given back (the first is dropped first) */
  private readonly order: GPUBuffer[] = [];
  private freeBytes = 0;
  /** buffers made and not destroyed (free, taken, or remapping) */
  private readonly all = new Set<GPUBuffer>();
  private closed = false;

  constructor(
    private readonly device: GPUDevice,
    readonly kind: 'read' | 'write',
    /** the most bytes kept free */
    readonly cap: number,
  ) {}

  /** bytes of the buffers made and not destroyed */
  get bytes(): number {
    let n = 0;
    for (const b of this.all) n += b.size;
    return n;
  }

  /** a buffer of at least `bytes` (read: unmapped; write: mapped over its whole size) */
  take(bytes: number): GPUBuffer {
    const size = stagingSize(bytes);
    const list = this.free.get(size);
    const b = list?.pop();
    if (b) {
      this.order.splice(this.order.indexOf(b), 1);
      this.freeBytes -= size;
      return b;
    }
    const usage = this.kind === 'read' ? GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST : GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC;
    const made = this.device.createBuffer({ label: `staging_${this.kind}`, size, usage, mappedAtCreation: this.kind === 'write' });
    this.all.add(made);
    return made;
  }

  /**
   * Gives a buffer back. read: unmapped, free at once. write: its copy submitted; it is mapped
   * again (mapAsync resolves once the copy is done) and free from then on.
   */
  give(b: GPUBuffer): void {
    if (this.closed) return void this.drop(b);
    if (this.kind === 'read') return this.keep(b);
    b.mapAsync(GPUMapMode.WRITE).then(
      () => (this.closed ? this.drop(b) : this.keep(b)),
      () => this.drop(b),
    );
  }

  /** a buffer that failed mid-use (an error between take and give): destroyed, not kept */
  drop(b: GPUBuffer): void {
    if (this.all.delete(b)) b.destroy();
  }

  /** Destroys the free buffers (taken ones are destroyed when given back). */
  trim(): void {
    for (const b of this.order) this.drop(b);
    this.order.length = 0;
    this.free.clear();
    this.freeBytes = 0;
  }

  /** Destroys every buffer; later gives destroy theirs. */
  close(): void {
    this.closed = true;
    this.trim();
    for (const b of this.all) b.destroy();
    this.all.clear();
  }

  private keep(b: GPUBuffer): void {
    let list = this.free.get(b.size);
    if (!list) this.free.set(b.size, (list = []));
    list.push(b);
    this.order.push(b);
    this.freeBytes += b.size;
    while (this.freeBytes > this.cap && this.order.length > 0) {
      const old = this.order.shift()!;
      const l = this.free.get(old.size)!;
      l.splice(l.indexOf(old), 1);
      this.freeBytes -= old.size;
      this.drop(old);
    }
  }
}
