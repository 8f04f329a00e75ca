// does openGpus (src/gpu/multi.ts) give one Gpu per physical GPU of this host? WebGPU cannot say which
// GPU an adapter is, so each Gpu k holds (k + 1) x 2 GiB (--unit=<GiB>) while nvidia-smi reads every
// GPU's memory: each GPU's use should rise by its own Gpu's amount.
//
//   node --import tsx scripts/multigpu_probe.ts              the host's GPUs (/sys/bus/pci/devices)
//   ENGRAM_GPU_BUSES=0000:41:00.0,0000:41:00.0 node ...      these PCI addresses (the same one twice:
//                                                            the device-select layer's path on one GPU)
// prints a log and a verdict (exit code 1 if a GPU's memory did not rise by what its Gpus hold); the
// layer must be installed (openGpus says how otherwise).

import { nvidiaSmi } from '../bench/lib.ts';
import { busOf, gpuBuses, hasDeviceSelectLayer, openGpus } from '../src/gpu/multi.ts';
import type { Tensor } from '../src/gpu/tensor.ts';
import { fill } from '../src/kernels/copy/copy.ts';

const query = () => nvidiaSmi(['index', 'pci.bus_id', 'memory.used']);
const smi = () => query()?.join('; ') ?? 'no nvidia-smi';
/** MiB in use by PCI address (nvidia-smi's 00000000:41:00.0 as 0000:41:00.0) */
const usedByBus = (): Map<string, number> =>
  new Map(
    (query() ?? [])
      .map((l) => l.split(',').map((x) => x.trim()))
      .map(([, bus, mib]) => [bus!.toLowerCase().replace(/^0000(?=[0-9a-f]{4}:)/, ''), Number(mib)] as const),
  );

console.log(`buses (/sys): ${gpuBuses().join(', ') || 'none'}; ENGRAM_GPU_BUSES: ${process.env['ENGRAM_GPU_BUSES'] ?? 'unset'}; device-select layer: ${hasDeviceSelectLayer()}`);
console.log(`idle: ${smi()}`);
const idle = usedByBus();
const gpus = await openGpus();
console.log(`opened ${gpus.length}: ${gpus.map((g) => g.adapterName).join(' | ')}`);
const unit = Number(process.argv.find((a) => a.startsWith('--unit='))?.slice(7) ?? 2);
const held: Tensor[][] = [];
for (const [k, gpu] of gpus.entries()) {
  const mine: Tensor[] = [];
  // tensors of at most 1 GiB (a binding holds at most 2 GiB - 4; lavapipe 128 MiB)
  const elements = Math.min(2 ** 28, Math.floor(gpu.device.limits.maxStorageBufferBindingSize / 4));
  for (let i = 0; i < Math.ceil(((k + 1) * unit * 2 ** 30) / (4 * elements)); i++) {
    const t = await gpu.tensor([elements], 'f32', `hold${k}`);
    await fill(gpu, t, k + 1);
    mine.push(t);
  }
  await gpu.sync();
  held.push(mine);
  console.log(`Gpu ${k} holds ${(k + 1) * unit} GiB: ${smi()}`);
}
// the verdict: each GPU's use rose by what the Gpus opened at its address hold (within 10%), the others' by under 1 GiB
const now = usedByBus();
const want = new Map<string, number>();
gpus.forEach((g, k) => {
  // openGpus opens the only GPU of a host on the default adapter, with no address
  const bus = busOf(g) ?? (now.size === 1 ? [...now.keys()][0]! : 'unknown');
  want.set(bus, (want.get(bus) ?? 0) + (k + 1) * unit * 1024);
});
// without nvidia-smi there is nothing to compare: no verdict, a failure
let wrong = now.size === 0 ? 1 : 0;
for (const [bus, mib] of now) {
  const rose = mib - (idle.get(bus) ?? 0);
  const expected = want.get(bus) ?? 0;
  const ok = expected > 0 ? rose >= 0.9 * expected && rose <= 1.1 * expected + 1024 : rose < 1024;
  if (!ok) wrong++;
  console.log(`${bus}: rose ${rose} MiB, its Gpus hold ${expected} MiB: ${ok ? 'ok' : 'WRONG'}`);
}
for (const [k, gpu] of gpus.entries()) {
  for (const t of held[k]!) t.dispose();
  gpu.destroy();
}
console.log(`released: ${smi()}`);
console.log(wrong === 0 ? 'each Gpu landed on the GPU at its address' : `${wrong} GPUs did not get what their Gpus hold: openGpus does not tell the GPUs apart here`);
process.exitCode = wrong === 0 ? 0 : 1;
