// softmax cross-entropy reference in float64.
//   lse[n]      = log sum_v exp(x[n,v])                  0 where t[n] = IGNORE_INDEX (row not read)
//   losses[n]   = lse[n] - x[n, t[n]]                    0 where t[n] = IGNORE_INDEX
//   loss        = sum_n losses[n] / count         count = rows with t[n] != IGNORE_INDEX; 0 if none
//   dx[n,v]     = (softmax(x[n])[v] - [v = t[n]]) * dloss / count      0 on ignored rows

/** a target equal to this (0xFFFFFFFF) marks a row to ignore (padding) */
export const IGNORE_INDEX = 0xffffffff;

export function xentForward(logits: ArrayLike<number>, targets: ArrayLike<number>, N: number, V: number) {
  const losses = new Float64Array(N);
  const lse = new Float64Array(N);
  let sum = 0;
  let count = 0;
  for (let n = 0; n < N; n++) {
    const t = targets[n]!;
    if (t === IGNORE_INDEX) continue;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[n * V + v]!);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[n * V + v]! - m);
    lse[n] = m + Math.log(s);
    losses[n] = m - logits[n * V + t]! + Math.log(s);
    sum += losses[n]!;
    count++;
  }
  return { losses, lse, loss: count > 0 ? sum / count : 0, count };
}

export function xentBackward(logits: ArrayLike<number>, targets: ArrayLike<number>, lse: ArrayLike<number>, N: number, V: number, dloss = 1) {
  const dlogits = new Float64Array(N * V);
  let count = 0;
  for (let n = 0; n < N; n++) if (targets[n] !== IGNORE_INDEX) count++;
  const k = dloss / Math.max(count, 1);
  for (let n = 0; n < N; n++) {
    const t = targets[n]!;
    if (t === IGNORE_INDEX) continue;
    for (let v = 0; v < V; v++) {
      const i = n * V + v;
      dlogits[i] = (Math.exp(logits[i]! - lse[n]!) - (v === t ? 1 : 0)) * k;
    }
  }
  return { dlogits };
}
