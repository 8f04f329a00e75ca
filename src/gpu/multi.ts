// the GPUs of one host, one Gpu each (Node): for a memory value table sharded over them
// (model/sharded_values.ts).
//
// WebGPU gives one adapter per request, and Dawn's node binding picks the first whose name matches,
// so the GPUs of a host (which share a name) are told apart by PCI address: adapter.ts
// requestAdapterAt opens each through a Dawn instance of its own, with Mesa's device-select Vulkan
// layer showing it alone. The layer ships with Mesa's Vulkan drivers (Debian: mesa-vulkan-drivers)
// and works over any Vulkan driver, NVIDIA's included; openGpus checks that it is installed.
//   openGpus({ count })             the first `count` GPUs of the host (PCI order), or all of them
//   openGpus({ buses })             these PCI addresses (or ENGRAM_GPU_BUSES='0000:41:00.0,0000:42:00.0')
//   openGpus({ count, shared })     `count` devices on the default adapter: the sharding's arithmetic
//                                   and exchanges on a machine with one GPU (tests), no speed-up
// WebGPU cannot say which physical GPU an adapter is: scripts/multigpu_probe.ts checks, on a host,
// that each Gpu's memory lands on its own GPU (nvidia-smi).

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { requestAdapterAt } from './adapter.ts';
import { Gpu, type GpuOptions } from './device.ts';
import { NoAdapterError } from './errors.ts';

/** the PCI addresses of the host's display controllers (PCI class 0x03), sorted; none where /sys has no PCI bus */
export function gpuBuses(root = '/sys/bus/pci/devices'): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((d) => {
      try {
        return readFileSync(join(root, d, 'class'), 'utf8').trim().startsWith('0x03');
      } catch {
        return false;
      }
    })
    .sort();
}

/**
 * Throws unless every address is one of the host's GPUs (when /sys lists any): for an address no
 * GPU has, the device-select layer falls back to the first GPU without a word
 * (bench/results/multigpu-nvidia-h100-80gb-hbm3-20261124/device_select_tag.txt).
 */
export function checkBuses(buses: readonly string[], host: readonly string[] = gpuBuses()): void {
  if (host.length === 0) return;
  const known = new Set(host.map((b) => b.toLowerCase()));
  const bad = buses.filter((b) => !known.has(b.toLowerCase()));
  if (bad.length > 0) {
    throw new NoAdapterError(`openGpus: no GPU at PCI address ${bad.join(', ')} (this host's GPUs: ${host.join(', ')}); check ENGRAM_GPU_BUSES or the buses given`);
  }
}

/**
 * where every Vulkan loader looks for implicit layers (Linux). VK_ADD_IMPLICIT_LAYER_PATH is left out:
 * loaders before it was added ignore it (Debian bookworm's 1.3.239 did, on the GPU host), and a layer
 * counted here but never loaded would put every Gpu on the first GPU without a word
 */
function implicitLayerDirs(): string[] {
  const env = (k: string) => (process.env[k] ?? '').split(':').filter(Boolean);
  const data = [...env('XDG_DATA_HOME'), ...(env('XDG_DATA_DIRS').length ? env('XDG_DATA_DIRS') : ['/usr/local/share', '/usr/share'])];
  return ['/etc', ...data].map((d) => join(d, 'vulkan', 'implicit_layer.d'));
}

/** whether Mesa's device-select layer is where the Vulkan loader finds implicit layers */
export function hasDeviceSelectLayer(): boolean {
  for (const dir of implicitLayerDirs()) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir)) {
      try {
        if (f.endsWith('.json') && readFileSync(join(dir, f), 'utf8').includes('VK_LAYER_MESA_device_select')) return true;
      } catch {
        // an unreadable manifest is not the layer
      }
    }
  }
  return false;
}

/** the PCI address each Gpu that openGpus opened by address was opened at */
const opened = new WeakMap<Gpu, string>();

/** the PCI address openGpus opened this Gpu at; undefined for one on the default adapter (shared, or a single GPU) */
export function busOf(gpu: Gpu): string | undefined {
  return opened.get(gpu);
}

/** one Gpu per GPU of the host (see the header) */
export async function openGpus(o: GpuOptions & { count?: number; buses?: readonly string[]; shared?: boolean } = {}): Promise<Gpu[]> {
  const { count, buses: given, shared, ...opts } = o;
  if (count !== undefined && !(Number.isInteger(count) && count > 0)) throw new NoAdapterError(`openGpus: count must be a positive integer, got ${count}`);
  if (shared) {
    // one after another, as every other caller of Gpu.create opens them
    const gpus: Gpu[] = [];
    for (let i = 0; i < (count ?? 1); i++) gpus.push(await Gpu.create(opts));
    return gpus;
  }
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu && (count ?? 1) > 1) throw new NoAdapterError('openGpus: a browser gives one adapter; several GPUs need Node');
  const fromEnv = (process.env['ENGRAM_GPU_BUSES'] ?? '').split(',').map((b) => b.trim()).filter(Boolean);
  const all = given ?? (fromEnv.length ? fromEnv : gpuBuses());
  const buses = count === undefined ? all : all.slice(0, count);
  if (count !== undefined && buses.length < count) {
    throw new NoAdapterError(`openGpus: ${count} GPUs asked for, ${all.length} found (${all.join(', ') || 'no PCI display controllers in /sys/bus/pci/devices'}); pass buses or ENGRAM_GPU_BUSES, or shared: true to test on one`);
  }
  if (buses.length <= 1) return [await Gpu.create(opts)];
  checkBuses(buses);
  if (!hasDeviceSelectLayer()) {
    throw new NoAdapterError(
      `openGpus: ${buses.length} GPUs need Mesa's device-select Vulkan layer to tell them apart, and no implicit layer manifest names VK_LAYER_MESA_device_select (looked in ${implicitLayerDirs().join(', ')}). ` +
        "Install it (Debian: 'apt-get install mesa-vulkan-drivers'; or scripts/device_select_layer.sh pack, then install, on a host without Mesa)",
    );
  }
  const gpus: Gpu[] = [];
  try {
    for (const bus of buses) {
      const gpu = await Gpu.create({ ...opts, adapter: await requestAdapterAt(bus, opts) });
      gpus.push(gpu);
      opened.set(gpu, bus);
    }
    return gpus;
  } catch (e) {
    for (const g of gpus) g.destroy();
    throw e;
  }
}
