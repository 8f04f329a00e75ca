// Tensor: a typed, shaped view of a byte range in a GPUBuffer. it owns nothing by itself:
// the allocator that made it (a standalone allocation, an Arena or the ScratchPool) decides
// what dispose() does. row-major, innermost dimension last.

import { byteSize, type TensorDType } from './dtype.ts';

/** usage of every storage buffer engram makes: STORAGE | COPY_SRC | COPY_DST */
export const STORAGE_USAGE = 0x80 | 0x4 | 0x8;

export interface TensorOwner {
  release(t: Tensor): void;
}

export class Tensor {
  private disposed = false;
  constructor(
    readonly buffer: GPUBuffer,
    /** byte offset into buffer; a multiple of the device's storage offset alignment */
    readonly offset: number,
    readonly shape: readonly number[],
    readonly dtype: TensorDType,
    readonly label: string,
    private readonly owner: TensorOwner | null,
  ) {}

  /** number of elements */
  get size(): number {
    return numel(this.shape);
  }

  /** bytes this tensor binds (whole words, at least one) */
  get byteLength(): number {
    return Math.max(4, byteSize(this.size, this.dtype));
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  binding(): GPUBufferBinding {
    return { buffer: this.buffer, offset: this.offset, size: this.byteLength };
  }

  /** A tensor over the same bytes with another shape of equal size. */
  reshape(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.size) {
      throw new Error(`reshape of '${this.label}': [${shape.join(',')}] has ${numel(shape)} elements, tensor has ${this.size}`);
    }
    return new Tensor(this.buffer, this.offset, shape, this.dtype, this.label, null);
  }

  /** A tensor over the same bytes read as another dtype and shape of equal byte length (16-bit pairs as u32 words, say). */
  bitcast(dtype: TensorDType, shape: readonly number[]): Tensor {
    const t = new Tensor(this.buffer, this.offset, shape, dtype, this.label, null);
    if (t.byteLength !== this.byteLength) {
      throw new Error(`bitcast of ${this}: [${shape.join(',')}]:${dtype} is ${t.byteLength} bytes, the tensor ${this.byteLength}`);
    }
    return t;
  }

  /** A view of this tensor's first numel(shape) elements (at most all of them), with that shape. */
  leading(shape: readonly number[]): Tensor {
    if (numel(shape) > this.size) {
      throw new Error(`leading view of '${this.label}': [${shape.join(',')}] has ${numel(shape)} elements, tensor has ${this.size}`);
    }
    return new Tensor(this.buffer, this.offset, shape, this.dtype, this.label, null);
  }

  /** Returns the memory to its owner. Views from reshape() own nothing. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.owner?.release(this);
  }

  toString(): string {
    return `${this.label}[${this.shape.join(',')}]:${this.dtype}`;
  }
}

export const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
