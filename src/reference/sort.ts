// stable sort of u32 (key, value) pairs and segment starts, in plain JS: the spec of the GPU sort.
//   keys >= 2^keyBits saturate to 2^keyBits - 1; without values the payload is the input index.

export function sortPairs(keys: ArrayLike<number>, values?: ArrayLike<number>, keyBits = 32): { keys: Uint32Array; values: Uint32Array } {
  const max = keyBits >= 32 ? 0xffffffff : 2 ** keyBits - 1;
  const n = keys.length;
  const k = Uint32Array.from({ length: n }, (_, i) => Math.min(keys[i]!, max));
  // Array.prototype.sort is stable (ES2019); ties keep input order
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => k[a]! - k[b]!);
  return {
    keys: Uint32Array.from(order, (i) => k[i]!),
    values: Uint32Array.from(order, (i) => (values ? values[i]! : i)),
  };
}

/** first index of every run of equal keys, then n */
export function segmentStarts(keys: ArrayLike<number>): number[] {
  const starts: number[] = [];
  for (let i = 0; i < keys.length; i++) if (i === 0 || keys[i] !== keys[i - 1]) starts.push(i);
  starts.push(keys.length);
  return starts;
}
