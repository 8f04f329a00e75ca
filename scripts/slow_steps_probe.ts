// are the memory layer's occasional slow training steps (the multigpu suite's notes list them)
// garbage collection? 40 steps of the paper's layer with its table on one GPU, then sharded over two
// devices of it, each step's time on a line; with --trace-gc, V8's collections land between them.
//
//   node --trace-gc --import tsx scripts/slow_steps_probe.ts
import { Gpu } from '../src/gpu/device.ts';
import { openGpus } from '../src/gpu/multi.ts';
import { fillNormal } from '../src/kernels/init/init.ts';
import { MemoryLayer } from '../src/model/memory_layer.ts';
import { ShardedValueTable } from '../src/model/sharded_values.ts';
import { ValueTable } from '../src/model/value_table.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { ShardedAdamW } from '../src/train/sharded_optimizer.ts';

const gpu = await Gpu.create();
const [other] = await openGpus({ count: 1, shared: true });
const o = { rows: 1024 * 1024, dim: 1024, dtype: 'bf16' as const, seed: 1 };
const cfg = { d: 1024, heads: 4, nKeys: 1024, topk: 32, keyDim: 512 };
for (const sharded of [false, true]) {
  const st = sharded ? await ShardedValueTable.create([gpu, other!], o) : null;
  const t = st ? null : await ValueTable.create(gpu, o);
  const layer = await MemoryLayer.create(gpu, 'mem', cfg, (st ?? t)!, 2);
  const opt = st ? await ShardedAdamW.create(gpu, layer.params, st, { lr: 1e-4 }) : await AdamW.create(gpu, [...layer.params, ...t!.params], { lr: 1e-4 });
  const x = await gpu.tensor([8192, 1024], 'f32');
  const dout = await gpu.tensor([8192, 1024], 'f32');
  await fillNormal(gpu, x, { std: 1, seed: 3 });
  await fillNormal(gpu, dout, { std: 1e-3, seed: 4 });
  for (let s = 0; s < 40; s++) {
    const t0 = performance.now();
    const y = await layer.forward(x);
    const t1 = performance.now();
    const dx = await layer.backward(dout);
    const t2 = performance.now();
    await opt.update();
    await gpu.sync();
    await other!.sync();
    const t3 = performance.now();
    y.dispose();
    dx.dispose();
    console.log(`${sharded ? 'sharded' : 'one'} step ${s}: ${(t3 - t0).toFixed(1)} ms (fwd ${(t1 - t0).toFixed(1)}, bwd ${(t2 - t1).toFixed(1)}, opt ${(t3 - t2).toFixed(1)})`);
  }
  for (const z of [x, dout]) z.dispose();
  opt.dispose();
  layer.dispose();
  t?.dispose();
  st?.dispose();
}
other!.destroy();
gpu.destroy();
