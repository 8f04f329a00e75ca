import assert from 'node:assert/strict';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { Rng } from '../testing/rng.ts';
import { crc32Js } from './crc32.ts';

test('crc32: the table-driven fallback agrees with zlib (and the standard check value)', () => {
  assert.equal(crc32Js(new TextEncoder().encode('123456789')), 0xcbf43926);
  const data = Uint8Array.from(new Rng(6).uniforms(1000, 0, 256), Math.floor);
  assert.equal(crc32Js(data.subarray(400), crc32Js(data.subarray(0, 400))), crc32Js(data));
  if (typeof (zlib as { crc32?: unknown }).crc32 === 'function') assert.equal(crc32Js(data), zlib.crc32(data));
});
