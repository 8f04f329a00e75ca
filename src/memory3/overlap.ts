// the leakage filter of Memory³ training (spec shared/specs/memory3.md §4): a (training sequence t,
// reference r) pair is dropped when r is nearly copied in t, so that the model cannot learn to
// copy its memories instead of using them.
//
//   overlap(t, r) = N / |r|, N the largest count of indices i_1 < ... < i_N in t and j_1 < ... < j_N
//                   in r with t[i_k] = r[j_k] for every k and i_N - i_1 <= 2|r|
//
// a longest common subsequence of r and a window of t of 2|r| + 1 tokens, the best window. computed
// as one LCS table per window start s (only starts where t[s] occurs in r: a best match can always
// be moved to start at a matched token), rows over the window, columns over r, after a bound that
// rejects most pairs at once: N is at most the multiset intersection of r and t. exact; the cost
// of a full check is |starts| x (2|r| + 1) x |r| cell updates (about 4M for |r| = 128 and one
// start). leaks() decides "overlap > threshold" with far fewer starts: such a match begins at one
// of r's first |r| - floor(threshold |r|) tokens, and it stops at the first window that passes.

/**
 * overlap(t, r) in [0, 1]; 0 for an empty r. stopAt: return as soon as a window reaches it;
 * firstJ: only matches that start at one of r's first firstJ tokens count (leaks() uses it: a
 * match of N tokens starts at j_1 <= |r| - N)
 */
export function overlap(t: ArrayLike<number>, r: ArrayLike<number>, stopAt = Infinity, firstJ = r.length): number {
  const m = r.length;
  if (m === 0) return 0;
  const bound = multisetCommon(t, r);
  if (bound === 0) return 0;
  const inR = new Set<number>();
  for (let j = 0; j < Math.min(m, firstJ); j++) inR.add(r[j]!);
  const W = 2 * m + 1;
  let best = 0;
  let prev = new Int32Array(m + 1);
  let cur = new Int32Array(m + 1);
  for (let s = 0; s < t.length && best < bound; s++) {
    if (!inR.has(t[s]!)) continue;
    prev.fill(0);
    const end = Math.min(t.length, s + W);
    for (let i = s; i < end; i++) {
      const x = t[i]!;
      cur[0] = 0;
      for (let j = 1; j <= m; j++) cur[j] = x === r[j - 1] ? prev[j - 1]! + 1 : Math.max(prev[j]!, cur[j - 1]!);
      [prev, cur] = [cur, prev];
    }
    best = Math.max(best, prev[m]!);
    if (best / m >= stopAt) break;
  }
  return best / m;
}

/** whether overlap(t, r) exceeds threshold (default 0.9, the paper's); stops as soon as it knows */
export function leaks(t: ArrayLike<number>, r: ArrayLike<number>, threshold = 0.9): boolean {
  if (r.length === 0) return false;
  const m = r.length;
  if (multisetCommon(t, r) / m <= threshold) return false;
  // N > threshold m needs N >= floor(threshold m) + 1, so a start j_1 <= m - floor(threshold m) - 1
  const firstJ = m - Math.floor(threshold * m);
  return overlap(t, r, threshold + 1e-12, firstJ) > threshold;
}

/** the size of the multiset intersection of t and r: an upper bound of the common subsequence */
function multisetCommon(t: ArrayLike<number>, r: ArrayLike<number>): number {
  const need = new Map<number, number>();
  for (let j = 0; j < r.length; j++) need.set(r[j]!, (need.get(r[j]!) ?? 0) + 1);
  let n = 0;
  for (let i = 0; i < t.length; i++) {
    const k = need.get(t[i]!);
    if (k) {
      need.set(t[i]!, k - 1);
      n++;
    }
  }
  return n;
}
