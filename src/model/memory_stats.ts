// health metrics of a memory layer's reads (Lample et al. 2019, §4.4), computed on the host from
// one batch's slots and weights (T, H, k):
//   usage    fraction of the N slots read at least once (with any weight)
//   kl       KL(p || uniform) = log N - entropy(p), p the read weight mass per slot, summed over
//            the batch and normalised: 0 when every slot gets the same mass, log N when one
//            slot gets all of it
//   entropy  mean over (token, head) of the entropy of its k read weights, in nats (log k
//            when the softmax is flat, 0 when one slot takes all)

export interface MemoryReadStats {
  usage: number;
  kl: number;
  entropy: number;
  /** (token, head) pairs the numbers cover */
  reads: number;
}

export function memoryStats(slots: ArrayLike<number>, weights: ArrayLike<number>, N: number, k: number): MemoryReadStats {
  if (slots.length !== weights.length || slots.length % k !== 0) {
    throw new Error(`memoryStats: ${slots.length} slots and ${weights.length} weights for groups of k = ${k}`);
  }
  const mass = new Map<number, number>();
  let total = 0;
  let entropy = 0;
  for (let r = 0; r < slots.length; r += k) {
    for (let j = r; j < r + k; j++) {
      const w = weights[j]!;
      mass.set(slots[j]!, (mass.get(slots[j]!) ?? 0) + w);
      total += w;
      if (w > 0) entropy -= w * Math.log(w);
    }
  }
  let h = 0;
  for (const m of mass.values()) if (m > 0) h -= (m / total) * Math.log(m / total);
  const reads = slots.length / k;
  return { usage: mass.size / N, kl: total > 0 ? Math.log(N) - h : 0, entropy: reads ? entropy / reads : 0, reads };
}

/** token t's reads, head by head, best first: what it looked up and how much it took of each */
export function tokenReads(slots: ArrayLike<number>, weights: ArrayLike<number>, t: number, H: number, k: number): { head: number; slot: number; weight: number }[] {
  const out: { head: number; slot: number; weight: number }[] = [];
  for (let h = 0; h < H; h++) for (let j = 0; j < k; j++) out.push({ head: h, slot: slots[(t * H + h) * k + j]!, weight: weights[(t * H + h) * k + j]! });
  return out;
}
