import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { requestAdapterAt } from './adapter.ts';
import { busOf, checkBuses, gpuBuses, hasDeviceSelectLayer, openGpus } from './multi.ts';

test('gpuBuses: the display controllers (PCI class 0x03) of a /sys/bus/pci/devices, sorted', () => {
  const root = mkdtempSync(join(tmpdir(), 'engram-pci-'));
  try {
    const devices: [string, string][] = [['0000:42:00.0', '0x030200'], ['0000:00:00.0', '0x060000'], ['0000:41:00.0', '0x030000'], ['0000:43:00.0', '0x020000']];
    for (const [bus, cls] of devices) {
      mkdirSync(join(root, bus));
      writeFileSync(join(root, bus, 'class'), `${cls}\n`);
    }
    mkdirSync(join(root, '0000:44:00.0')); // no class file
    assert.deepEqual(gpuBuses(root), ['0000:41:00.0', '0000:42:00.0']);
    assert.deepEqual(gpuBuses(join(root, 'none')), []);
  } finally {
    rmSync(root, { recursive: true });
  }
});

test('hasDeviceSelectLayer: a manifest naming VK_LAYER_MESA_device_select where the loader looks', () => {
  const dir = mkdtempSync(join(tmpdir(), 'engram-layers-'));
  // each key restored by itself: the Vulkan loader reads the real environment (XDG_DATA_DIRS finds its drivers)
  const keys = ['VK_ADD_IMPLICIT_LAYER_PATH', 'VK_IMPLICIT_LAYER_PATH', 'XDG_DATA_HOME', 'XDG_DATA_DIRS'];
  const saved = keys.map((k) => process.env[k]);
  try {
    for (const k of keys.slice(0, 3)) delete process.env[k];
    process.env['XDG_DATA_DIRS'] = join(dir, 'nowhere');
    assert.equal(hasDeviceSelectLayer(), false);
    mkdirSync(join(dir, 'vulkan', 'implicit_layer.d'), { recursive: true });
    writeFileSync(join(dir, 'vulkan', 'implicit_layer.d', 'layer.json'), JSON.stringify({ layer: { name: 'VK_LAYER_MESA_device_select' } }));
    // a path only newer loaders read does not count
    process.env['VK_ADD_IMPLICIT_LAYER_PATH'] = join(dir, 'vulkan', 'implicit_layer.d');
    assert.equal(hasDeviceSelectLayer(), false);
    process.env['XDG_DATA_HOME'] = dir;
    assert.equal(hasDeviceSelectLayer(), true);
  } finally {
    keys.forEach((k, i) => {
      if (saved[i] === undefined) delete process.env[k];
      else process.env[k] = saved[i];
    });
    rmSync(dir, { recursive: true });
  }
});

test('openGpus: shared devices on one adapter work apart; clear errors', async () => {
  const gpus = await openGpus({ count: 2, shared: true });
  try {
    assert.equal(gpus.length, 2);
    assert.notEqual(gpus[0], gpus[1]);
    assert.deepEqual(gpus.map(busOf), [undefined, undefined], 'devices of the default adapter have no PCI address');
    const [a, b] = [await gpus[0]!.tensorFrom([1, 2], [2]), await gpus[1]!.tensorFrom([3, 4], [2])];
    assert.deepEqual([...(await gpus[0]!.read(a)), ...(await gpus[1]!.read(b))], [1, 2, 3, 4]);
  } finally {
    for (const g of gpus) g.destroy();
  }
  await assert.rejects(openGpus({ count: 0 }), /count must be a positive integer, got 0/);
  await assert.rejects(openGpus({ count: 3, buses: ['0000:41:00.0'] }), /3 GPUs asked for, 1 found \(0000:41:00.0\)/);
  await assert.rejects(requestAdapterAt('41:00.0'), /'41:00.0' is no PCI address/);
  // an address no GPU of the host has would open the first GPU without a word: refused up front
  assert.throws(() => checkBuses(['0000:00:06.0', '0000:00:07.0'], ['0000:00:06.0']), /no GPU at PCI address 0000:00:07.0 \(this host's GPUs: 0000:00:06.0\)/);
  checkBuses(['0000:00:06.0', '0000:00:06.0'], ['0000:00:06.0']);
  checkBuses(['0000:41:00.0'], []);
});
