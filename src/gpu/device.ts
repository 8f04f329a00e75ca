// Gpu: one WebGPU device and everything engram keeps about it.
//
//  - features and limits: the adapter's real limits are requested (WebGPU's defaults are tiny),
//    plus shader-f16, subgroups, timestamp-query and subgroup matrices where present.
//  - errors: allocation is wrapped in an out-of-memory scope; uncaptured errors and device loss
//    are recorded and rethrown, typed, at the next sync().
//  - memory: every buffer goes through createBuffer() (out of memory surfaces at the next sync) or
//    allocate() (it throws there, after reclaiming destroyed buffers' memory and trying once more),
//    which keep byte accounting per label.
//  - transfers: reads back and large uploads go through kept host-visible buffers (staging.ts);
//    readView hands the mapped bytes over without a copy.
//  - dispatch: kernels are recorded into one compute pass, submitted every submitEvery
//    dispatches (the GPU works while the host records on) and at every read; their uniform
//    blocks are staged on the host and written with one writeBuffer right before the submit
//    (queue order makes this safe even though the uniform buffer is reused by every flush).
//    bind groups are made once per (pipeline, bound ranges) and kept until one of their
//    buffers is destroyed: a decode step binds the same scratch buffers at the same offsets
//    every step, and making a bind group cost more host time than recording the dispatch.

import { describeAdapter, isCpuAdapter, releaseGpuEntry, requestAdapter, type AdapterOptions } from './adapter.ts';
import { byteSize, decode, encode, type TensorDType } from './dtype.ts';
import { DeviceLostError, EngramError, GpuValidationError, LimitError, OutOfMemoryError } from './errors.ts';
import { PipelineCache, type Pipeline } from './pipelines.ts';
import { ScratchPool } from './buffers.ts';
import { StagingPool } from './staging.ts';
import { STORAGE_USAGE, Tensor, numel } from './tensor.ts';

export interface GpuFeatures {
  f16: boolean;
  subgroups: boolean;
  timestamps: boolean;
  /** subgroup-matrix configurations (chromium-experimental-subgroup-matrix), empty if absent */
  subgroupMatrix: readonly SubgroupMatrixConfig[];
}

export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface GpuOptions extends AdapterOptions {
  /** Turn off optional features (to test fallback paths). */
  disable?: readonly ('shader-f16' | 'subgroups' | 'timestamp-query' | 'subgroup-matrix')[];
  /** this adapter instead of the default one (multi.ts openGpus: one per GPU of the host) */
  adapter?: GPUAdapter;
}

export interface MemoryStats {
  /** bytes in live buffers */
  bytes: number;
  /** live buffers */
  buffers: number;
  /** bytes by allocation label */
  byLabel: ReadonlyMap<string, number>;
  /** the most bytes live at once since creation or the last resetPeak() */
  peak: number;
  /** host memory in staging buffers kept for reads and writes (staging.ts), not in `bytes` */
  staging: number;
}

const UNIFORM_STAGING_BYTES = 1 << 18;
/** writes smaller than this go through queue.writeBuffer; larger ones through a kept mapped buffer (staging.ts) */
const DIRECT_WRITE_BYTES = 1 << 16;
/** the most free bytes each staging pool keeps */
const STAGING_CAP = 1 << 28;
/** bind groups kept for reuse (dispatch) before the cache starts over */
const MAX_BIND_GROUPS = 1 << 14;

/** live Gpu instances: Dawn's entry object is released with the last one */
let liveGpus = 0;

export class Gpu {
  readonly pipelines: PipelineCache;
  /** short-lived tensors (kernel temporaries); see buffers.ts */
  readonly scratch: ScratchPool;
  readonly limits: Readonly<Record<string, number>>;
  readonly adapterName: string;
  /**
   * a CPU implementation (lavapipe, SwiftShader): a few cores, not a hundred SMs. kernels pick
   * CPU mappings (no barriers, a row per thread) when set; tests clear it to run the GPU
   * mappings on a CPU adapter (pipeline names differ, so the cache stays right).
   */
  cpu: boolean;
  /**
   * the adapter's subgroup size when it is fixed (subgroupMinSize = subgroupMaxSize; an adapter
   * that does not say is taken as 32 wide), else null
   */
  readonly subgroupSize: number | null;
  private readonly pending: EngramError[] = [];
  private lost: GPUDeviceLostInfo | null = null;
  private destroyed = false;
  private readonly live = new Map<GPUBuffer, { bytes: number; label: string; id: number }>();
  private nextBufferId = 0;
  /** bind groups already made, by pipeline and bound ranges (dispatch) with their buffers, and the keys each buffer is in */
  private readonly bindGroups = new Map<string, { group: GPUBindGroup; buffers: GPUBuffer[] }>();
  private readonly groupsOf = new Map<GPUBuffer, Set<string>>();
  private readonly pipelineIds = new WeakMap<Pipeline, number>();
  private nextPipelineId = 0;
  /** kept host-visible buffers for reads back and for uploads (staging.ts) */
  private readonly readStaging: StagingPool;
  private readonly writeStaging: StagingPool;
  /** what reclaim() submits work on */
  private reclaimBuffer: GPUBuffer | null = null;
  private readonly byLabel = new Map<string, number>();
  private liveBytes = 0;
  private peakBytes = 0;

  // recording state
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private uniforms: GPUBuffer;
  private readonly staging = new ArrayBuffer(UNIFORM_STAGING_BYTES);
  private stagingUsed = 0;
  private readonly uniformAlign: number;
  private nextPassTimestamps: GPUComputePassTimestampWrites | null = null;
  /** the open pass writes timestamps: it is not split by submitEvery */
  private timedPass = false;
  private sinceSubmit = 0;
  /**
   * dispatches recorded before they are submitted on their own (0: only flush() and reads
   * submit). the GPU then starts on a long recording, a decode step of a deep model or a
   * training step, while the host records the rest. a pass with timestamps is never split.
   */
  submitEvery = 64;
  /** dispatches recorded and submits made since creation (for tests, timing and profiling) */
  dispatches = 0;
  flushes = 0;
  /** bind groups made (dispatch reuses one per pipeline and bound ranges) */
  bindGroupsMade = 0;
  /** called with the kernel's name before each dispatch is recorded (see profiler.ts) */
  beforeDispatch: ((kernel: string) => void) | null = null;

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: GPUAdapter,
    readonly features: GpuFeatures,
  ) {
    liveGpus++;
    this.adapterName = describeAdapter(adapter);
    this.cpu = isCpuAdapter(adapter);
    const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
    const max = info.subgroupMaxSize ?? 32;
    this.subgroupSize = (info.subgroupMinSize ?? max) === max && max > 0 ? max : null;
    const limits: Record<string, number> = {};
    for (const k in device.limits) limits[k] = (device.limits as unknown as Record<string, number>)[k]!;
    this.limits = limits;
    this.uniformAlign = device.limits.minUniformBufferOffsetAlignment;
    this.pipelines = new PipelineCache(device);
    this.scratch = new ScratchPool(this);
    this.readStaging = new StagingPool(device, 'read', STAGING_CAP);
    this.writeStaging = new StagingPool(device, 'write', STAGING_CAP);
    this.uniforms = this.createBuffer('uniforms', UNIFORM_STAGING_BYTES, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
    device.addEventListener('uncapturederror', (ev) => {
      const e = (ev as GPUUncapturedErrorEvent).error;
      this.pending.push(
        e instanceof GPUOutOfMemoryError
          ? new OutOfMemoryError(`GPU out of memory: ${e.message}`)
          : new GpuValidationError(`WebGPU error: ${e.message}`),
      );
    });
    void device.lost.then((info) => {
      this.lost = info;
      if (info.reason !== 'destroyed') {
        console.error(`engram: WebGPU device lost (${info.reason}): ${info.message}. Create a new Gpu to continue.`);
      }
    });
  }

  /** Opens the default adapter and a device with its real limits and the features engram uses. */
  static async create(opts: GpuOptions = {}): Promise<Gpu> {
    const adapter = opts.adapter ?? (await requestAdapter(opts));
    const off = new Set(opts.disable ?? []);
    const want: GPUFeatureName[] = [];
    const has = (f: string) => adapter.features.has(f);
    if (has('shader-f16') && !off.has('shader-f16')) want.push('shader-f16');
    if (has('subgroups') && !off.has('subgroups')) want.push('subgroups');
    if (has('timestamp-query') && !off.has('timestamp-query')) want.push('timestamp-query');
    const smName = 'chromium-experimental-subgroup-matrix';
    if (has(smName) && !off.has('subgroup-matrix')) want.push(smName as GPUFeatureName);
    const requiredLimits: Record<string, number> = {};
    for (const k in adapter.limits) {
      const v = (adapter.limits as unknown as Record<string, unknown>)[k];
      if (typeof v === 'number') requiredLimits[k] = v;
    }
    const device = await adapter.requestDevice({ label: 'engram', requiredFeatures: want, requiredLimits });
    const info = adapter.info as GPUAdapterInfo & { subgroupMatrixConfigs?: SubgroupMatrixConfig[] };
    const features: GpuFeatures = {
      f16: device.features.has('shader-f16'),
      subgroups: device.features.has('subgroups'),
      timestamps: device.features.has('timestamp-query'),
      subgroupMatrix: device.features.has(smName) ? [...(info.subgroupMatrixConfigs ?? [])] : [],
    };
    return new Gpu(device, adapter, features);
  }

  // ---------------------------------------------------------------- memory

  /** Creates a buffer with byte accounting. OOM surfaces at the next sync(); use allocate() to catch it here. */
  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags): GPUBuffer {
    const { buffer, error } = this.makeBuffer(label, size, usage);
    void error.then((e) => {
      if (e) this.pending.push(outOfMemory(label, size, e));
    });
    return buffer;
  }

  /**
   * Creates a buffer with byte accounting, failing here with OutOfMemoryError (the buffer freed)
   * if the device is out of memory. (an error scope pushed around createBuffer would not see the
   * error: createBuffer's own scope takes it.)
   */
  async allocate(label: string, size: number, usage: GPUBufferUsageFlags): Promise<GPUBuffer> {
    for (let retry = false; ; retry = true) {
      const { buffer, error } = this.makeBuffer(label, size, usage);
      const e = await error;
      if (!e) return buffer;
      this.destroyBuffer(buffer);
      if (retry) throw outOfMemory(label, size, e);
      // the memory of buffers destroyed since the last submit may still be held: free it, try once more
      await this.reclaim();
    }
  }

  /**
   * Frees the memory of destroyed buffers. Dawn frees a destroyed buffer's memory once the GPU has
   * finished a submit made after the destroy, so after a free with nothing submitted since (a
   * model disposed, an allocation that ran out of memory) the memory stays held until this.
   */
  async reclaim(): Promise<void> {
    this.reclaimBuffer ??= this.createBuffer('reclaim', 4, GPUBufferUsage.COPY_DST);
    const b = this.reclaimBuffer;
    this.encode((enc) => enc.clearBuffer(b, 0, 4));
    await this.sync();
  }

  /** a buffer in the books, and its out-of-memory scope's result */
  private makeBuffer(label: string, size: number, usage: GPUBufferUsageFlags): { buffer: GPUBuffer; error: Promise<GPUError | null> } {
    this.assertAlive();
    if (size > this.device.limits.maxBufferSize) {
      throw new LimitError(`buffer '${label}' of ${size} bytes exceeds maxBufferSize ${this.device.limits.maxBufferSize}`);
    }
    this.device.pushErrorScope('out-of-memory');
    const buffer = this.device.createBuffer({ label, size, usage });
    const error = this.device.popErrorScope();
    this.live.set(buffer, { bytes: size, label, id: this.nextBufferId++ });
    this.liveBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    this.byLabel.set(label, (this.byLabel.get(label) ?? 0) + size);
    return { buffer, error };
  }

  destroyBuffer(buffer: GPUBuffer): void {
    const rec = this.live.get(buffer);
    if (!rec) return;
    // commands recorded but not submitted may use it: a destroyed buffer would invalidate the
    // whole submit, so they go first (the GPU finishes them before the memory is reused)
    if (this.encoder) this.flush();
    this.live.delete(buffer);
    // its bind groups go, from every buffer's list (a weight's list would otherwise grow by a key
    // for each step's fresh input buffer)
    for (const key of this.groupsOf.get(buffer) ?? []) {
      for (const b of this.bindGroups.get(key)?.buffers ?? []) if (b !== buffer) this.groupsOf.get(b)?.delete(key);
      this.bindGroups.delete(key);
    }
    this.groupsOf.delete(buffer);
    this.liveBytes -= rec.bytes;
    const left = (this.byLabel.get(rec.label) ?? 0) - rec.bytes;
    if (left > 0) this.byLabel.set(rec.label, left);
    else this.byLabel.delete(rec.label);
    buffer.destroy();
  }

  /** Byte accounting of live buffers. */
  memory(): MemoryStats {
    return { bytes: this.liveBytes, buffers: this.live.size, byLabel: new Map(this.byLabel), peak: this.peakBytes, staging: this.readStaging.bytes + this.writeStaging.bytes };
  }

  /** Starts a new peak measurement at the bytes live now (memory().peak). */
  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }

  /** Allocates a standalone tensor, failing here (not later) if the device is out of memory. */
  async tensor(shape: readonly number[], dtype: TensorDType = 'f32', label = 'tensor'): Promise<Tensor> {
    const bytes = this.checkBindable(shape, dtype, label);
    const buffer = await this.allocate(label, bytes, STORAGE_USAGE);
    return new Tensor(buffer, 0, shape, dtype, label, { release: () => this.destroyBuffer(buffer) });
  }

  /** Allocates a tensor and uploads `values` (rounded to dtype). */
  async tensorFrom(values: ArrayLike<number>, shape: readonly number[], dtype: TensorDType = 'f32', label = 'tensor'): Promise<Tensor> {
    if (values.length !== numel(shape)) {
      throw new EngramError(`tensorFrom '${label}': ${values.length} values for shape [${shape.join(',')}] (${numel(shape)} elements)`);
    }
    const t = await this.tensor(shape, dtype, label);
    this.write(t, values);
    return t;
  }

  /** Bytes a tensor needs; throws if it cannot be bound in one storage binding. */
  checkBindable(shape: readonly number[], dtype: TensorDType, label: string): number {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new EngramError(`tensor '${label}': bad shape [${shape.join(',')}]`);
    }
    const bytes = Math.max(4, byteSize(numel(shape), dtype));
    const max = this.device.limits.maxStorageBufferBindingSize;
    if (bytes > max) {
      throw new LimitError(
        `tensor '${label}' [${shape.join(',')}]:${dtype} needs ${bytes} bytes, over this adapter's maxStorageBufferBindingSize (${max}); split it`,
      );
    }
    return bytes;
  }

  // ---------------------------------------------------------------- dispatch

  /**
   * Records one dispatch. `storage[i]` binds at @binding(i + 1); the uniform block `params`
   * (32-bit words, see kernels/kernel.ts) binds at @binding(0) when given.
   */
  dispatch(
    p: Pipeline,
    storage: readonly (Tensor | GPUBufferBinding)[],
    params: ArrayBuffer | null,
    workgroups: readonly [number, number?, number?],
  ): void {
    this.assertAlive();
    const [x, y = 1, z = 1] = workgroups;
    const maxWg = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > maxWg || y > maxWg || z > maxWg) {
      throw new LimitError(`kernel '${p.name}': dispatch [${x},${y},${z}] exceeds maxComputeWorkgroupsPerDimension ${maxWg}`);
    }
    if (x === 0 || y === 0 || z === 0) return;
    // a bind group per (pipeline, bound ranges), made once: a decode step binds the same scratch
    // buffers at the same offsets every step, and making a bind group costs more on the host than
    // recording the dispatch. a buffer's groups go when it is destroyed (destroyBuffer)
    let uniform: GPUBufferBinding | null = null;
    if (params) {
      const need = Math.ceil(params.byteLength / this.uniformAlign) * this.uniformAlign;
      if (this.stagingUsed + need > UNIFORM_STAGING_BYTES) this.flush();
      new Uint8Array(this.staging, this.stagingUsed, params.byteLength).set(new Uint8Array(params));
      uniform = { buffer: this.uniforms, offset: this.stagingUsed, size: params.byteLength };
      this.stagingUsed += need;
    }
    const bindings = storage.map((s) => {
      if (s instanceof Tensor && s.isDisposed) throw new EngramError(`kernel '${p.name}': tensor '${s.label}' was disposed`);
      return s instanceof Tensor ? s.binding() : s;
    });
    let pid = this.pipelineIds.get(p);
    if (pid === undefined) this.pipelineIds.set(p, (pid = this.nextPipelineId++));
    let key = `${pid}`;
    if (uniform) key += `|u${uniform.offset}:${uniform.size}`;
    for (const b of bindings) key += `|${this.live.get(b.buffer)?.id ?? -1}:${b.offset ?? 0}:${b.size ?? -1}`;
    let group = this.bindGroups.get(key)?.group;
    if (!group) {
      const entries: GPUBindGroupEntry[] = bindings.map((b, i) => ({ binding: i + 1, resource: b }));
      if (uniform) entries.unshift({ binding: 0, resource: uniform });
      group = this.device.createBindGroup({ label: p.name, layout: p.layout, entries });
      this.bindGroupsMade++;
      // only groups of tracked buffers are kept (an untracked one could be destroyed unseen)
      if (bindings.every((b) => this.live.has(b.buffer))) {
        if (this.bindGroups.size >= MAX_BIND_GROUPS) this.forgetBindGroups();
        const buffers = [...new Set(bindings.map((x) => x.buffer))];
        this.bindGroups.set(key, { group, buffers });
        for (const b of buffers) {
          const keys = this.groupsOf.get(b);
          if (keys) keys.add(key);
          else this.groupsOf.set(b, new Set([key]));
        }
      }
    }
    this.beforeDispatch?.(p.name);
    const pass = this.currentPass();
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
    if (this.submitEvery > 0 && ++this.sinceSubmit >= this.submitEvery && !this.timedPass) this.flush();
  }

  /** bind groups kept, and the (buffer, group) links that find them when a buffer goes (tests) */
  bindGroupsKept(): { groups: number; links: number } {
    let links = 0;
    for (const keys of this.groupsOf.values()) links += keys.size;
    return { groups: this.bindGroups.size, links };
  }

  /** drops every kept bind group (the cache is full: a workload binding ever new ranges) */
  private forgetBindGroups(): void {
    this.bindGroups.clear();
    this.groupsOf.clear();
  }

  private currentPass(): GPUComputePassEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder({ label: 'engram' });
    if (!this.pass) {
      const desc: GPUComputePassDescriptor = { label: 'engram' };
      if (this.nextPassTimestamps) desc.timestampWrites = this.nextPassTimestamps;
      this.timedPass = this.nextPassTimestamps !== null;
      this.nextPassTimestamps = null;
      this.pass = this.encoder.beginComputePass(desc);
    }
    return this.pass;
  }

  /** Ends the open compute pass (the next dispatch opens a new one). */
  endPass(): void {
    this.pass?.end();
    this.pass = null;
    this.timedPass = false;
  }

  /** The next compute pass writes these timestamps (see timing.ts). */
  setNextPassTimestamps(t: GPUComputePassTimestampWrites): void {
    this.endPass();
    this.nextPassTimestamps = t;
  }

  /** Gives the command encoder to `fn` outside any pass (copies, query resolves), in order. */
  encode(fn: (enc: GPUCommandEncoder) => void): void {
    this.assertAlive();
    this.endPass();
    this.encoder ??= this.device.createCommandEncoder({ label: 'engram' });
    fn(this.encoder);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    this.endPass();
    if (!this.encoder) return;
    if (this.stagingUsed > 0) this.device.queue.writeBuffer(this.uniforms, 0, this.staging, 0, this.stagingUsed);
    this.stagingUsed = 0;
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.flushes++;
    this.sinceSubmit = 0;
  }

  /** Flushes, waits for the GPU to finish, and throws any error recorded meanwhile. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPending();
  }

  throwPending(): void {
    if (this.lost && this.lost.reason !== 'destroyed') {
      throw new DeviceLostError(`WebGPU device lost (${this.lost.reason}): ${this.lost.message}`);
    }
    const e = this.pending.shift();
    if (e) {
      this.pending.length = 0;
      throw e;
    }
  }

  private assertAlive(): void {
    if (this.destroyed) throw new DeviceLostError('this Gpu was destroyed; create a new one');
    if (this.lost) throw new DeviceLostError(`WebGPU device lost (${this.lost.reason}): ${this.lost.message}`);
  }

  // ---------------------------------------------------------------- transfer

  /** Uploads raw bytes (the tensor's storage layout) into t, after the work recorded so far. */
  writeBytes(t: Tensor, bytes: Uint8Array): void {
    if (bytes.byteLength !== t.byteLength) throw new EngramError(`writeBytes to ${t}: got ${bytes.byteLength} bytes, need ${t.byteLength}`);
    this.upload(t.buffer, t.offset, bytes);
  }

  /** Uploads raw bytes at a byte offset of a buffer (a multiple of 4), after the work recorded so far. */
  writeRange(buffer: GPUBuffer, offset: number, bytes: Uint8Array): void {
    if (offset % 4 !== 0 || bytes.byteLength % 4 !== 0) throw new EngramError(`writeRange: offset ${offset} and ${bytes.byteLength} bytes must be multiples of 4`);
    this.upload(buffer, offset, bytes);
  }

  /** Uploads values (rounded to the tensor's dtype), after the work recorded so far. */
  write(t: Tensor, values: ArrayLike<number>): void {
    if (values.length !== t.size) throw new EngramError(`write to ${t}: got ${values.length} values, need ${t.size}`);
    const bytes = encode(values, t.dtype);
    this.upload(t.buffer, t.offset, new Uint8Array(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, t.byteLength)));
  }

  /**
   * bytes into buffer at offset, ordered after the work recorded so far (which must not run
   * after, and overwrite, the write). small writes go through queue.writeBuffer (after a flush:
   * it runs before any later submit); large ones through a kept mapped buffer and a recorded copy
   * (staging.ts), submitted at once so that the buffer can be mapped again.
   */
  private upload(buffer: GPUBuffer, offset: number, bytes: Uint8Array): void {
    this.assertAlive();
    if (bytes.byteLength < DIRECT_WRITE_BYTES) {
      this.flush();
      this.device.queue.writeBuffer(buffer, offset, bytes as Uint8Array<ArrayBuffer>);
      return;
    }
    const size = bytes.byteLength;
    const staging = this.writeStaging.take(size);
    try {
      new Uint8Array(staging.getMappedRange(0, size)).set(bytes);
      staging.unmap();
      this.encode((enc) => enc.copyBufferToBuffer(staging, 0, buffer, offset, size));
      this.flush();
    } catch (e) {
      this.writeStaging.drop(staging);
      throw e;
    }
    this.writeStaging.give(staging);
  }

  /** Reads a tensor back: floats as f32 (f16/bf16 decoded), u32/i32 as integers. Waits for all recorded work. */
  async read(t: Tensor): Promise<Float32Array | Uint32Array | Int32Array> {
    const bytes = await this.readBytes(t.buffer, t.offset, t.byteLength);
    return decode(bytes, t.dtype, t.size);
  }

  /** Reads a tensor's stored bytes back as they are (f16/bf16 undecoded). Waits for all recorded work. */
  async readRaw(t: Tensor): Promise<Uint8Array> {
    return new Uint8Array(await this.readBytes(t.buffer, t.offset, t.byteLength));
  }

  /** Reads a byte range back (a copy the caller keeps). Waits for all recorded work. */
  async readBytes(buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    return this.readView(buffer, offset, size, (bytes) => bytes.slice().buffer);
  }

  /**
   * Reads a byte range back and hands `use` the mapped bytes themselves, valid only during the
   * call (no copy: an exchange uploads them to another device straight from here). Waits for
   * all recorded work.
   */
  async readView<T>(buffer: GPUBuffer, offset: number, size: number, use: (bytes: Uint8Array) => T): Promise<T> {
    return this.readRangesView(buffer, [{ offset, size }], (views) => use(views[0]!));
  }

  /**
   * Reads several byte ranges of one buffer with a single copy-and-map round trip (one staging
   * buffer holding the ranges back to back). Offsets and sizes must be multiples of 4
   * (copyBufferToBuffer's alignment). Waits for all recorded work.
   */
  async readRanges(buffer: GPUBuffer, ranges: readonly { offset: number; size: number }[]): Promise<ArrayBuffer[]> {
    if (ranges.length === 0) return [];
    return this.readRangesView(buffer, ranges, (views) => views.map((v) => v.slice().buffer));
  }

  private async readRangesView<T>(buffer: GPUBuffer, ranges: readonly { offset: number; size: number }[], use: (views: Uint8Array[]) => T): Promise<T> {
    for (const r of ranges) {
      if (!(Number.isInteger(r.offset) && Number.isInteger(r.size) && r.offset >= 0 && r.size >= 0) || r.offset % 4 !== 0 || r.size % 4 !== 0) {
        throw new EngramError(`reading '${buffer.label}': offset ${r.offset} and size ${r.size} must be non-negative multiples of 4 (copyBufferToBuffer alignment)`);
      }
      if (r.offset + r.size > buffer.size) {
        throw new EngramError(`reading '${buffer.label}': range [${r.offset}, ${r.offset + r.size}) runs past the buffer's ${buffer.size} bytes`);
      }
    }
    const starts: number[] = [];
    let total = 0;
    for (const r of ranges) {
      starts.push(total);
      total += r.size;
    }
    const need = Math.max(4, total);
    const staging = this.readStaging.take(need);
    let done = false;
    try {
      this.encode((enc) => {
        // ranges that continue one another (a decode step's rows of logits) go as one copy
        for (let i = 0; i < ranges.length; ) {
          let j = i + 1;
          while (j < ranges.length && ranges[j]!.offset === ranges[j - 1]!.offset + ranges[j - 1]!.size) j++;
          const size = starts[j - 1]! + ranges[j - 1]!.size - starts[i]!;
          if (size > 0) enc.copyBufferToBuffer(buffer, ranges[i]!.offset, staging, starts[i]!, size);
          i = j;
        }
      });
      this.flush();
      await staging.mapAsync(GPUMapMode.READ, 0, need);
      const bytes = staging.getMappedRange(0, need);
      const out = use(ranges.map((r, i) => new Uint8Array(bytes, starts[i]!, r.size)));
      staging.unmap();
      done = true;
      this.throwPending();
      return out;
    } finally {
      // a buffer left mapped by an error is destroyed, not kept
      if (done && !this.destroyed) this.readStaging.give(staging);
      else this.readStaging.drop(staging);
    }
  }

  // ---------------------------------------------------------------- lifetime

  /** Destroys the device and every buffer; lets a Node process exit. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const b of this.live.keys()) b.destroy();
    this.live.clear();
    this.readStaging.close();
    this.writeStaging.close();
    this.liveBytes = 0;
    this.byLabel.clear();
    this.device.destroy();
    if (--liveGpus === 0) releaseGpuEntry();
  }
}

function outOfMemory(label: string, size: number, e: GPUError): OutOfMemoryError {
  return new OutOfMemoryError(`out of GPU memory allocating '${label}' (${size} bytes): ${e.message}`);
}
