// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320: the one of zlib, gzip and PNG), the checksum of
// memory blobs (memory3/blob.ts) and PQ codebooks (memory3/pq.ts): node:zlib's where this Node has it,
// a table-driven one where it does not (Node < 20.15).

import zlib from 'node:zlib';

let table: Uint32Array | undefined;

/** Table-driven CRC-32, continuing from `crc` (0 to start); the fallback where node:zlib has no crc32 (< 20.15). */
export function crc32Js(data: Uint8Array, crc = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 continuing from `crc`: node:zlib's (native, fast) where this Node has it, else crc32Js */
export const crc32: (data: Uint8Array, crc?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (d, c = 0) => zlib.crc32(d, c) : crc32Js;
