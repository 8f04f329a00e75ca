// how fast can the host move bytes between WebGPU devices through Dawn? the sharded value table's
// exchanges (model/sharded_values.ts) are read backs on one device and uploads on another; this
// times the ways of doing each, on buffers of the sizes a step moves, so the exchange can use the
// fastest. every figure is the median of --reps runs after a warm-up, in GB/s (bytes / seconds).
//
//   node --import tsx scripts/host_transfer_probe.ts [--reps=7] [--sizes=4,1024,4096,16384,65536 (KiB)]
//
// read back (device -> host array):
//   read_fresh        Gpu.readBytes: a new MAP_READ buffer, copy, map, slice, destroy
//   read_kept         one MAP_READ buffer kept: copy, map, set() into a kept host array, unmap
//   read_kept_view    the same without the host copy (the mapped range only touched)
//   read_chunks4      four kept buffers, each a quarter: all copies submitted, then the maps awaited in order
// upload (host array -> device):
//   write_queue       queue.writeBuffer (Dawn copies into its staging, then to the buffer)
//   write_mapped      one MAP_WRITE buffer kept: map, set(), unmap, copyBufferToBuffer
// between two devices (the exchange itself):
//   xfer_fresh        readBytes on the first, writeBuffer on the second
//   xfer_kept_direct  kept MAP_READ buffer on the first; writeBuffer on the second straight from its mapped range
//   xfer_chunks4      the same in four chunks, the second's uploads as each chunk's map resolves
// and the latency of a 4-byte read back (map round trip), microseconds.

import { openGpus } from '../src/gpu/multi.ts';
import type { Gpu } from '../src/gpu/device.ts';

const arg = (k: string, d: string) => process.argv.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3) ?? d;
const reps = Number(arg('reps', '7'));
const sizes = arg('sizes', '4,1024,4096,16384,65536').split(',').map((s) => Number(s) * 1024);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function time(f: () => Promise<void>): Promise<number> {
  await f();
  const t: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    await f();
    t.push((performance.now() - t0) / 1000);
  }
  return median(t);
}

const gpus = await openGpus({ count: 2, shared: process.argv.includes('--shared') });
const [a, b] = gpus as [Gpu, Gpu];
console.log(`devices: ${gpus.map((g) => g.adapterName).join(' | ')}`);
const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const out: Record<string, number> = {};

for (const size of sizes) {
  const src = a.createBuffer('src', size, S);
  const dst = b.createBuffer('dst', size, S);
  const dstA = a.createBuffer('dstA', size, S);
  const host = new Uint8Array(size);
  for (let i = 0; i < size; i += 4096) host[i] = i & 255;
  a.device.queue.writeBuffer(src, 0, host);
  await a.sync();
  const keptR = a.createBuffer('keptR', size, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
  const q = size / 4;
  const chunksR = [0, 1, 2, 3].map(() => a.createBuffer('chunkR', q, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST));
  const keptW = a.createBuffer('keptW', size, GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC);
  const sink = new Uint8Array(size);

  const readKept = async (copy: boolean) => {
    a.encode((e) => e.copyBufferToBuffer(src, 0, keptR, 0, size));
    a.flush();
    await keptR.mapAsync(GPUMapMode.READ);
    const v = new Uint8Array(keptR.getMappedRange());
    if (copy) sink.set(v);
    else sink[0] = v[size - 1]!;
    keptR.unmap();
  };
  const chunked = async (to: (v: Uint8Array, k: number) => void) => {
    a.encode((e) => chunksR.forEach((c, k) => e.copyBufferToBuffer(src, k * q, c, 0, q)));
    a.flush();
    const maps = chunksR.map((c) => c.mapAsync(GPUMapMode.READ));
    for (const [k, c] of chunksR.entries()) {
      await maps[k];
      to(new Uint8Array(c.getMappedRange()), k);
      c.unmap();
    }
  };
  const kib = size / 1024;
  const rate = (s: number) => size / s / 1e9;
  out[`read_fresh_${kib}`] = rate(await time(async () => void (await a.readBytes(src, 0, size))));
  out[`read_kept_${kib}`] = rate(await time(() => readKept(true)));
  out[`read_kept_view_${kib}`] = rate(await time(() => readKept(false)));
  if (size >= 16) out[`read_chunks4_${kib}`] = rate(await time(() => chunked((v, k) => sink.set(v, k * q))));
  out[`write_queue_${kib}`] = rate(await time(async () => {
    a.device.queue.writeBuffer(dstA, 0, host);
    await a.sync();
  }));
  out[`write_mapped_${kib}`] = rate(await time(async () => {
    await keptW.mapAsync(GPUMapMode.WRITE);
    new Uint8Array(keptW.getMappedRange()).set(host);
    keptW.unmap();
    a.encode((e) => e.copyBufferToBuffer(keptW, 0, dstA, 0, size));
    await a.sync();
  }));
  out[`xfer_fresh_${kib}`] = rate(await time(async () => {
    const bytes = await a.readBytes(src, 0, size);
    b.device.queue.writeBuffer(dst, 0, bytes);
    await b.sync();
  }));
  out[`xfer_kept_direct_${kib}`] = rate(await time(async () => {
    a.encode((e) => e.copyBufferToBuffer(src, 0, keptR, 0, size));
    a.flush();
    await keptR.mapAsync(GPUMapMode.READ);
    b.device.queue.writeBuffer(dst, 0, keptR.getMappedRange());
    keptR.unmap();
    await b.sync();
  }));
  if (size >= 16) out[`xfer_chunks4_${kib}`] = rate(await time(async () => {
    await chunked((v, k) => b.device.queue.writeBuffer(dst, k * q, v as Uint8Array<ArrayBuffer>));
    await b.sync();
  }));
  // check the last transfer's bytes
  const back = new Uint8Array(await b.readBytes(dst, 0, size));
  for (let i = 0; i < size; i += 4096) if (back[i] !== host[i]) throw new Error(`transfer of ${size} bytes wrong at ${i}`);
  for (const x of [src, dstA, keptR, keptW, ...chunksR]) a.destroyBuffer(x);
  b.destroyBuffer(dst);
  console.log(Object.entries(out).filter(([k]) => k.endsWith(`_${kib}`)).map(([k, v]) => `${k} ${v.toFixed(2)}`).join('  '));
}

const tiny = a.createBuffer('tiny', 4, S);
const lat = await time(async () => void (await a.readBytes(tiny, 0, 4)));
console.log(`latency_4B_read_us ${(lat * 1e6).toFixed(0)}`);
console.log(JSON.stringify({ ...out, latency_4B_read_us: lat * 1e6 }));
for (const g of gpus) g.destroy();
