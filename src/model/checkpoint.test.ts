// model checkpoints: a trained model with a memory block (bf16 value table) saved and loaded gives
// the same parameters and loss; HF config fields; corrupt and mismatched checkpoints fail clearly.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeCheckpoint } from '../io/checkpoint.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { AdamW } from '../train/optimizer.ts';
import { Trainer } from '../train/trainer.ts';
import { loadModel, saveModel } from './checkpoint.ts';
import { parseModelConfig } from './config.ts';
import { Transformer } from './transformer.ts';

test('save and load a trained model with a memory block: same parameters, same loss; bad folders fail clearly', async () => {
  const gpu = await testGpu();
  const dir = mkdtempSync(join(tmpdir(), 'engram-ckpt-'));
  try {
    const config = parseModelConfig({
      vocabSize: 24,
      dim: 16,
      layers: 2,
      heads: 2,
      kvHeads: 1,
      ffnHidden: 24,
      maxSeqLen: 8,
      memory: { layers: [0], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'bf16' },
    });
    const model = await Transformer.create(gpu, config, 5);
    const opt = await AdamW.create(gpu, model.params, { lr: 1e-2 });
    const rng = new Rng(3);
    const ids = await gpu.tensorFrom(Array.from({ length: 16 }, () => rng.int(24)), [2, 8], 'u32', 'ids');
    const targets = await gpu.tensorFrom(Array.from({ length: 16 }, () => rng.int(24)), [2, 8], 'u32', 'targets');
    await new Trainer(gpu, model, opt, { warmup: 1, steps: 3, minRatio: 1 }).step([{ ids, targets }]);
    const ck = join(dir, 'ckpt');
    await saveModel(gpu, ck, model, { 'tokenizer.json': '{"model":{}}' });
    const hf = JSON.parse(readFileSync(join(ck, 'config.json'), 'utf8'));
    assert.equal(hf.architectures[0], 'LlamaForCausalLM');
    assert.equal(hf.num_key_value_heads, 1);
    assert.equal(hf.engram.memory.layers[0], 0);
    const { model: back, files } = await loadModel(gpu, ck);
    assert.equal(new TextDecoder().decode(files['tokenizer.json']), '{"model":{}}');
    const a = model.params;
    const b = back.params;
    assert.deepEqual(b.map((p) => p.name), a.map((p) => p.name));
    for (let i = 0; i < a.length; i++) assert.deepEqual(await gpu.read(b[i]!.value), await gpu.read(a[i]!.value), a[i]!.name);
    const l1 = await model.forward(ids, targets);
    const l2 = await back.forward(ids, targets);
    assert.equal((await gpu.read(l2))[0], (await gpu.read(l1))[0]);
    for (const t of [l1, l2]) t.dispose();
    // a flipped byte, and a config that does not match the tensors
    const st = join(ck, 'model.safetensors');
    const bytes = readFileSync(st);
    bytes[bytes.length - 3]! ^= 0xff;
    writeFileSync(st, bytes);
    await assert.rejects(loadModel(gpu, ck), /file 'model.safetensors': checksum mismatch/);
    await saveModel(gpu, ck, model);
    const cfgPath = join(ck, 'config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    cfg.engram.ffnHidden = 32;
    await writeCheckpoint(ck, { 'model.safetensors': readFileSync(st), 'config.json': JSON.stringify(cfg) });
    await assert.rejects(loadModel(gpu, ck), /tensor 'model.layers.1.mlp.gate_proj.weight' is \[24, 16\] F32; the config wants \[32, 16\] F32/);
    for (const t of [ids, targets]) t.dispose();
    opt.dispose();
    model.dispose();
    back.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

