// finding a WebGPU adapter: navigator.gpu in browsers, Dawn's `webgpu` package in Node.
//
// Dawn pitfall: the GPU object returned by create() must stay reachable for the whole life of
// the process. if only a local holds it, V8 may collect it while Dawn's event-loop hook still
// runs, and the process dies at random (futex errors, segfaults). we pin it on globalThis.

import { NoAdapterError } from './errors.ts';

/** Dawn toggles engram turns on by default (Node only). */
export const DEFAULT_DAWN_TOGGLES = [
  // shader-f16 is off by default on NVIDIA's Vulkan driver in Dawn; this exposes it.
  // allow_unsafe_apis exposes chromium-experimental-subgroup-matrix (tensor cores).
  'enable-dawn-features=vulkan_enable_f16_on_nvidia,allow_unsafe_apis',
  // Dawn rounds timestamps to a coarse quantum by default (a browser fingerprinting guard);
  // a profiler wants them exact.
  'disable-dawn-features=timestamp_quantization',
];

/**
 * Dawn keeps one value per flag name (a later 'enable-dawn-features=x' replaces an earlier
 * one), so the comma lists of the toggle flags are merged: ENGRAM_DAWN_TOGGLES=
 * 'enable-dawn-features=disable_robustness' adds to the defaults instead of dropping them.
 * other flags keep their last value.
 */
export function mergeDawnFlags(flags: readonly string[]): string[] {
  const merged = new Map<string, string[]>();
  for (const f of flags) {
    const eq = f.indexOf('=');
    const key = eq < 0 ? f : f.slice(0, eq);
    const value = eq < 0 ? '' : f.slice(eq + 1);
    const list = key === 'enable-dawn-features' || key === 'disable-dawn-features';
    const prev = list ? (merged.get(key) ?? []) : [];
    merged.set(key, [...prev, ...(list ? value.split(',').filter((v) => v && !prev.includes(v)) : [value])]);
  }
  return [...merged].map(([k, v]) => (v.length === 1 && v[0] === '' ? k : `${k}=${v.join(',')}`));
}

const PIN = Symbol.for('engram.dawn.gpu');
type Pinned = { [PIN]?: GPU };

export interface AdapterOptions {
  /** Extra Dawn toggles for Node, e.g. 'adapter=NVIDIA H100'. ENGRAM_DAWN_TOGGLES (comma/space list) adds more. */
  toggles?: readonly string[];
  powerPreference?: GPUPowerPreference;
}

/** The GPU entry point: navigator.gpu when present, else Dawn through the `webgpu` package. */
export async function gpuEntry(opts: AdapterOptions = {}): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  const pinned = globalThis as Pinned;
  if (pinned[PIN]) return pinned[PIN];
  const gpu = await newDawnInstance(opts);
  pinned[PIN] = gpu;
  return gpu;
}

/** a new Dawn instance (Node): the `webgpu` package's create() with engram's toggles */
async function newDawnInstance(opts: AdapterOptions): Promise<GPU> {
  let mod: { create: (flags: string[]) => GPU; globals: Record<string, unknown> };
  try {
    mod = (await import('webgpu')) as typeof mod;
  } catch (e) {
    throw new NoAdapterError(
      `could not load Dawn's 'webgpu' package (${String(e)}); run 'npm install' in the project root`,
      { cause: e },
    );
  }
  Object.assign(globalThis, mod.globals);
  const env = (process.env['ENGRAM_DAWN_TOGGLES'] ?? '').split(/[\s]+/).filter(Boolean);
  return mod.create(mergeDawnFlags([...DEFAULT_DAWN_TOGGLES, ...(opts.toggles ?? []), ...env]));
}

/** the Dawn instances made for one GPU each (requestAdapterAt), pinned as the default one is */
const PER_GPU = Symbol.for('engram.dawn.gpus');
type PinnedMany = { [PER_GPU]?: GPU[] };

/**
 * An adapter of the GPU at a PCI address ('0000:41:00.0', as /sys/bus/pci/devices names it), Node
 * on Linux. Dawn's node binding takes the first adapter whose name holds its `adapter` flag, and
 * the GPUs of one host share a name; so a new Dawn instance enumerates the GPUs while Mesa's
 * device-select Vulkan layer (VK_LAYER_MESA_device_select) shows that one alone (DRI_PRIME=
 * pci-0000_41_00_0 with MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE=1: the layer reads them when
 * the devices are enumerated; both are restored after). The layer must be installed
 * (multi.ts checks).
 */
export async function requestAdapterAt(bus: string, opts: AdapterOptions = {}): Promise<GPUAdapter> {
  const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i.exec(bus);
  if (!m) throw new NoAdapterError(`requestAdapterAt: '${bus}' is no PCI address (domain:bus:device.function, e.g. 0000:41:00.0)`);
  const keys = ['DRI_PRIME', 'MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE'] as const;
  const before = keys.map((k) => process.env[k]);
  process.env['DRI_PRIME'] = `pci-${m[1]}_${m[2]}_${m[3]}_${m[4]}`.toLowerCase();
  process.env['MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE'] = '1';
  try {
    const gpu = await newDawnInstance(opts);
    const pinned = globalThis as PinnedMany;
    (pinned[PER_GPU] ??= []).push(gpu);
    const adapter = await adapterOf(gpu, opts);
    if (!adapter) throw new NoAdapterError(`no WebGPU adapter for the GPU at ${bus}`);
    return adapter;
  } finally {
    keys.forEach((k, i) => {
      if (before[i] === undefined) delete process.env[k];
      else process.env[k] = before[i];
    });
  }
}

/** Drops the pinned Dawn objects so that a Node process can exit (call after device.destroy()). */
export function releaseGpuEntry(): void {
  delete (globalThis as Pinned)[PIN];
  delete (globalThis as PinnedMany)[PER_GPU];
}

export async function requestAdapter(opts: AdapterOptions = {}): Promise<GPUAdapter> {
  const adapter = await adapterOf(await gpuEntry(opts), opts);
  if (!adapter) {
    throw new NoAdapterError(
      'no WebGPU adapter found. On Linux without a GPU install Mesa lavapipe >= 25 ' +
        "(Debian: 'apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1', or run .ci/install-vulkan.sh); " +
        "in a browser enable WebGPU (Chromium: --enable-unsafe-webgpu).",
    );
  }
  return adapter;
}

/** the adapter an entry point gives for the options (null: none) */
function adapterOf(gpu: GPU, opts: AdapterOptions): Promise<GPUAdapter | null> {
  const req: GPURequestAdapterOptions = {};
  if (opts.powerPreference) req.powerPreference = opts.powerPreference;
  return gpu.requestAdapter(req);
}

/**
 * Whether the adapter is a CPU implementation (Mesa's lavapipe/llvmpipe, SwiftShader, or one
 * the browser calls a fallback adapter): a few cores, so kernels size their grids differently.
 */
export function isCpuAdapter(adapter: GPUAdapter): boolean {
  const i = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  if (i.isFallbackAdapter) return true;
  return /llvmpipe|lavapipe|swiftshader/i.test([i.vendor, i.architecture, i.device, i.description].join(' '));
}

/** A one-line name for the adapter, e.g. 'NVIDIA H100 80GB HBM3 (nvidia hopper, vulkan)'. */
export function describeAdapter(adapter: GPUAdapter): string {
  const i = adapter.info;
  // NVIDIA's Vulkan driver reports only its version as the description ('NVIDIA: 580.159.04 ...');
  // then the device field carries the board ('nvidia-h100-80gb-hbm3')
  const desc = i.description ?? '';
  const driverOnly = /^[A-Za-z]+: [\d. ]+$/.test(desc);
  // browsers may leave description and device empty (Chromium's SwiftShader: vendor 'google',
  // architecture 'swiftshader'); the vendor and architecture then name it
  const name = driverOnly && i.device ? `${i.device}, driver ${desc.split(': ')[1]}` : desc || i.device;
  if (!name) return [i.vendor, i.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  const extra = [i.vendor, i.architecture].filter(Boolean).join(' ');
  return extra ? `${name} (${extra})` : name;
}
