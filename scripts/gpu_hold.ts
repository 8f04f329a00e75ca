// gpu_hold.ts <GiB> <seconds>: opens the default WebGPU adapter, holds <GiB> of GPU memory and
// runs 4096^3 f32 matrix products for <seconds>, then prints what it did. used to see, from
// nvidia-smi's per-GPU memory and load, which GPU a process landed on (scripts/on_gpu.sh).
import { Gpu } from '../src/gpu/device.ts';
import { matmul } from '../src/kernels/matmul/matmul.ts';

const gib = Number(process.argv[2] ?? 1);
const seconds = Number(process.argv[3] ?? 5);
const gpu = await Gpu.create();
console.log(`adapter: ${gpu.adapterName}`);
const held = [];
for (let i = 0; i < gib; i++) held.push(await gpu.tensor([256, 1024, 1024], 'f32', 'hold'));
const n = 4096;
const a = await gpu.tensor([n, n]);
const b = await gpu.tensor([n, n]);
const c = await gpu.tensor([n, n]);
const t0 = performance.now();
let products = 0;
while (performance.now() - t0 < seconds * 1000) {
  for (let i = 0; i < 10; i++) await matmul(gpu, { out: c }, { a, b });
  await gpu.sync();
  products += 10;
}
const s = (performance.now() - t0) / 1000;
console.log(`held ${gib} GiB; ${products} products of ${n}^3 in ${s.toFixed(1)} s: ${((2 * n ** 3 * products) / s / 1e12).toFixed(1)} TFLOP/s`);
for (const t of [...held, a, b, c]) t.dispose();
gpu.destroy();
process.exit(0);
