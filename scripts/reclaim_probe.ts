// on a GPU: is the memory of disposed tensors free at once, after a sync, after Gpu.reclaim(), and does an
// allocation that runs out of memory reclaim and try again? fills the GPU with 1 GiB tensors three times.
//
//   node --import tsx scripts/reclaim_probe.ts     (nvidia-smi must be on the PATH)

import { nvidiaSmi } from '../bench/lib.ts';
import { Gpu } from '../src/gpu/device.ts';

const smi = () => `${nvidiaSmi(['memory.used'])?.join(' / ') ?? '?'} MiB`;
const gpu = await Gpu.create();
const GiB = 2 ** 28;
async function grab(label: string) {
  const ts = [];
  let why = 'cap';
  for (let i = 0; i < 100; i++) {
    try {
      ts.push(await gpu.tensor([GiB], 'f32', label));
    } catch (e) {
      why = String(e).slice(0, 60);
      break;
    }
  }
  console.log(`${label}: ${ts.length} GiB (${why}); smi ${smi()}`);
  return ts;
}
let ts = await grab('first');
for (const t of ts) t.dispose();
console.log(`disposed: smi ${smi()}`);
await gpu.sync();
console.log(`synced: smi ${smi()}`);
await gpu.reclaim();
console.log(`reclaimed: smi ${smi()}`);
ts = await grab('second');
for (const t of ts) t.dispose();
ts = await grab('third (allocate retries after its first failure)');
for (const t of ts) t.dispose();
await gpu.reclaim();
console.log(`end: smi ${smi()}`);
gpu.destroy();
