// benchmark plumbing: timing on the GPU, the torch side-by-side runner, and result files
// bench/results/<suite>-<device-slug>-<YYYYMMDD>.json as README's "Benchmarks" section describes.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Gpu } from '../src/gpu/device.ts';
import { GpuTimer } from '../src/gpu/timing.ts';

export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));

export interface TimeOptions {
  /** calls before timing (compiles pipelines) */
  warmup?: number;
  /** then keep calling for this long before timing: clocks up (see warmUp); default 500 */
  warmupMs?: number;
  /** timed regions; the result is the median region */
  reps?: number;
  /** calls back to back in one timed region (keeps the GPU busy and its clocks up) */
  inner?: number;
}

/**
 * GPU milliseconds per call of `fn` (which records dispatches), one value per timed region. Each
 * region runs `inner` calls back to back: one call between CPU round trips lets an idle GPU drop
 * its clocks, which under-reports a short kernel; so does a GPU that idled while the CPU
 * prepared inputs (warmupMs). With timestamp queries a region is one compute pass; without,
 * wall clock around a synced region.
 */
export async function timePasses(gpu: Gpu, fn: () => Promise<void>, opts: TimeOptions = {}): Promise<number[]> {
  const { warmup = 3, warmupMs = 500, reps = 7, inner = 10 } = opts;
  for (let i = 0; i < warmup; i++) await fn();
  await gpu.sync();
  if (warmupMs > 0) await warmUp(gpu, fn, warmupMs / 1000);
  const times: number[] = [];
  const timer = gpu.features.timestamps ? new GpuTimer(gpu) : null;
  try {
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      timer?.begin();
      for (let k = 0; k < inner; k++) await fn();
      const ms = timer ? await timer.end() : (await gpu.sync(), performance.now() - t0);
      times.push(ms / inner);
    }
  } finally {
    timer?.dispose();
  }
  return times;
}

/**
 * Runs `fn` back to back for `seconds` (synced every 5 calls). A GPU that has been idle runs
 * at lower clocks for a while: on an H100 the first copy measured ran at 1.8 TB/s, the same
 * copy after two seconds of load at 3.0 TB/s. Suites call this before their first timing.
 */
export async function warmUp(gpu: Gpu, fn: () => Promise<void>, seconds = 2): Promise<void> {
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    for (let i = 0; i < 5; i++) await fn();
    await gpu.sync();
  }
}

export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Median GPU milliseconds per call of `fn` (see timePasses). */
export async function timeGpu(gpu: Gpu, fn: () => Promise<void>, opts: TimeOptions = {}): Promise<number> {
  return median(await timePasses(gpu, fn, opts));
}

/** nvidia-smi's --query-gpu of `fields`: a line per GPU (csv, no header, no units); null where there is no nvidia-smi */
export function nvidiaSmi(fields: readonly string[]): string[] | null {
  try {
    return execFileSync('nvidia-smi', [`--query-gpu=${fields.join(',')}`, '--format=csv,noheader,nounits'], { encoding: 'utf8' }).trim().split('\n');
  } catch {
    return null;
  }
}

/**
 * The device a result file names. NVIDIA's Vulkan driver reports only its version string to
 * WebGPU, so on NVIDIA the board name comes from nvidia-smi.
 */
export function deviceName(gpu: Gpu): string {
  // without nvidia-smi: the adapter's own name
  const board = gpu.adapter.info.vendor === 'nvidia' ? nvidiaSmi(['name'])?.[0] : undefined;
  return board ? `${board} (Vulkan, ${gpu.adapterName})` : gpu.adapterName;
}

/** 'NVIDIA H100 80GB HBM3 (Vulkan, ...)' -> 'nvidia-h100-80gb-hbm3' */
export function deviceSlug(name: string): string {
  const base = name.split(' (')[0] ?? name;
  return base.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 48) || 'unknown';
}

function commit(): string {
  if (process.env['ENGRAM_COMMIT']) return process.env['ENGRAM_COMMIT'];
  try {
    const head = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim();
    return dirty ? `${head}-dirty` : head;
  } catch {
    return 'unknown';
  }
}

export interface ResultFile {
  suite: string;
  device: string;
  date: string;
  commit: string;
  command: string;
  results: Record<string, number>;
  notes?: Record<string, string>;
}

/** Writes the result file and returns its path. */
export function writeResults(
  suite: string,
  device: string,
  results: Record<string, number>,
  notes: Record<string, string> = {},
  command = `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
): string {
  const now = new Date();
  const ymd = now.toISOString().slice(0, 10).replace(/-/g, '');
  const file: ResultFile = {
    suite,
    device,
    date: now.toISOString(),
    commit: commit(),
    command,
    results,
  };
  if (Object.keys(notes).length) file.notes = notes;
  const dir = process.env['ENGRAM_BENCH_DIR'] ?? join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${suite}-${deviceSlug(device)}-${ymd}.json`);
  // through a temporary file and a rename: processes writing one suite's file at once (one per
  // GPU) never leave it half-written
  writeFileSync(`${path}.${process.pid}.tmp`, JSON.stringify(file, null, 2) + '\n');
  renameSync(`${path}.${process.pid}.tmp`, path);
  return path;
}

/**
 * Runs a PyTorch script from bench/torch (same machine, same command) and returns the metrics
 * it prints as its last line of JSON. Missing python3/torch/CUDA gives {} and a note.
 */
export function runTorch(script: string, args: string[] = []): { results: Record<string, number>; note?: string } {
  const r = spawnSync(process.env['PYTHON'] ?? 'python3', [join(BENCH_DIR, 'torch', script), ...args], {
    encoding: 'utf8',
    timeout: 300_000,
  });
  if (r.error || r.status !== 0) {
    const why = r.error ? String(r.error) : (r.stderr || '').trim().split('\n').slice(-3).join(' | ');
    return { results: {}, note: `torch baseline not run: ${why}` };
  }
  const last = r.stdout.trim().split('\n').pop() ?? '{}';
  // a script that measured something but not everything says what failed on stderr
  const failed = (r.stderr || '').split('\n').filter((l) => /failed/.test(l));
  return { results: JSON.parse(last) as Record<string, number>, ...(failed.length ? { note: failed.join(' | ') } : {}) };
}

export function table(results: Record<string, number>): string {
  const w = Math.max(...Object.keys(results).map((k) => k.length));
  return Object.entries(results)
    .map(([k, v]) => `${k.padEnd(w)}  ${Number.isInteger(v) ? v : v.toPrecision(4)}`)
    .join('\n');
}
