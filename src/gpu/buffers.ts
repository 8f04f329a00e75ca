// named arenas (parameters, gradients, optimizer state, activations) and a scratch pool.
//
// Arena (llm.c's malloc_and_point): declare every tensor first, then commit() makes one buffer
// per chunk and points the tensors into it. tensors are aligned to the device's storage offset
// alignment; a chunk never exceeds maxBufferSize, and no tensor exceeds the binding limit.
// disposing an arena tensor does nothing: the arena frees everything at once.
//
// ScratchPool: short-lived tensors, reused by byte-size class (powers of two, and 1.5x between).
// reuse needs no fence: every dispatch runs on one queue in submission order, so a buffer given
// back after its last use is only written by work recorded later.

import type { Gpu } from './device.ts';
import { type TensorDType } from './dtype.ts';
import { EngramError, OutOfMemoryError } from './errors.ts';
import { STORAGE_USAGE, Tensor, type TensorOwner } from './tensor.ts';

interface Slot {
  name: string;
  shape: readonly number[];
  dtype: TensorDType;
  bytes: number;
  chunk: number;
  offset: number;
}

export class Arena {
  private readonly slots: Slot[] = [];
  private readonly tensors = new Map<string, Tensor>();
  private buffers: GPUBuffer[] = [];
  private chunkBytes: number[] = [0];
  private committed = false;

  constructor(
    private readonly gpu: Gpu,
    readonly name: string,
  ) {}

  /** Declares a tensor; it exists after commit(). Returns its name for convenience. */
  declare(name: string, shape: readonly number[], dtype: TensorDType = 'f32'): string {
    if (this.committed) throw new EngramError(`arena '${this.name}': declare('${name}') after commit()`);
    if (this.slots.some((s) => s.name === name)) throw new EngramError(`arena '${this.name}': '${name}' declared twice`);
    const bytes = this.gpu.checkBindable(shape, dtype, `${this.name}.${name}`);
    const align = this.gpu.device.limits.minStorageBufferOffsetAlignment;
    const maxChunk = Math.min(this.gpu.device.limits.maxBufferSize, 1 << 30 /* keep chunks moderate */);
    let chunk = this.chunkBytes.length - 1;
    let offset = Math.ceil(this.chunkBytes[chunk]! / align) * align;
    if (offset + bytes > maxChunk && offset > 0) {
      this.chunkBytes.push(0);
      chunk++;
      offset = 0;
    }
    this.chunkBytes[chunk] = offset + bytes;
    this.slots.push({ name, shape, dtype, bytes, chunk, offset });
    return name;
  }

  /** Allocates the arena's buffers; throws OutOfMemoryError naming the arena if they do not fit. */
  async commit(): Promise<void> {
    if (this.committed) return;
    const made: GPUBuffer[] = [];
    try {
      for (const [i, b] of this.chunkBytes.entries()) made.push(await this.gpu.allocate(`${this.name}#${i}`, Math.max(4, b), STORAGE_USAGE));
    } catch (e) {
      for (const b of made) this.gpu.destroyBuffer(b);
      throw e instanceof OutOfMemoryError ? new OutOfMemoryError(`committing arena '${this.name}' (${this.bytes} bytes): ${e.message}`) : e;
    }
    this.buffers = made;
    for (const s of this.slots) {
      this.tensors.set(s.name, new Tensor(this.buffers[s.chunk]!, s.offset, s.shape, s.dtype, `${this.name}.${s.name}`, null));
    }
    this.committed = true;
  }

  get(name: string): Tensor {
    const t = this.tensors.get(name);
    if (!t) {
      throw new EngramError(
        this.committed ? `arena '${this.name}' has no tensor '${name}'` : `arena '${this.name}': get('${name}') before commit()`,
      );
    }
    return t;
  }

  names(): string[] {
    return this.slots.map((s) => s.name);
  }

  /** bytes the arena holds (committed) or will hold */
  get bytes(): number {
    return this.chunkBytes.reduce((a, b) => a + b, 0);
  }

  dispose(): void {
    for (const b of this.buffers) this.gpu.destroyBuffer(b);
    this.buffers = [];
    this.tensors.clear();
  }
}

export class ScratchPool implements TensorOwner {
  private readonly free = new Map<number, GPUBuffer[]>();
  private readonly sizeOf = new Map<GPUBuffer, number>();
  private inUse = 0;
  /** fill every buffer taken with NaN (ENGRAM_POISON_SCRATCH=1; tests) */
  poison = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.['ENGRAM_POISON_SCRATCH'] === '1';

  constructor(private readonly gpu: Gpu) {}

  /** A scratch tensor; give it back with dispose(). Contents are undefined. */
  take(shape: readonly number[], dtype: TensorDType = 'f32', label = 'scratch'): Tensor {
    const bytes = this.gpu.checkBindable(shape, dtype, label);
    const cls = sizeClass(bytes);
    const buffer = this.free.get(cls)?.pop() ?? this.gpu.createBuffer('scratch', cls, STORAGE_USAGE);
    if (this.poison) {
      // tests: fill with NaN words, so that a kernel that reads scratch it did not write shows
      // (new buffers are zero-filled by WebGPU and would hide it). recorded work goes first.
      this.gpu.flush();
      this.gpu.device.queue.writeBuffer(buffer, 0, new Uint32Array(cls / 4).fill(0x7fc00000));
    }
    this.sizeOf.set(buffer, cls);
    this.inUse++;
    return new Tensor(buffer, 0, shape, dtype, label, this);
  }

  release(t: Tensor): void {
    const cls = this.sizeOf.get(t.buffer);
    if (cls === undefined) return;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    list.push(t.buffer);
    this.inUse--;
  }

  /** scratch tensors taken and not yet given back */
  get outstanding(): number {
    return this.inUse;
  }

  /** Frees the pooled (not outstanding) buffers. */
  trim(): void {
    for (const list of this.free.values()) {
      for (const b of list) {
        this.sizeOf.delete(b);
        this.gpu.destroyBuffer(b);
      }
    }
    this.free.clear();
  }
}

/** byte size classes: 256 B minimum, then 2^k and 1.5 * 2^k */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.floor(Math.log2(bytes));
  if (bytes === p) return p;
  return bytes <= p * 1.5 ? p * 1.5 : p * 2;
}
