// a retrieval plan (bm25.ts planRetrieval) adjusted for parts of the training stream.
//
// counterfactual asking documents (data/counterfactual.ts) state a real subject with another object, in a
// card of their own. that card must reach the chunks of its own document, and the subject's true card must
// not reach them: a chunk that read both would see its memories contradict each other. the counterfactual
// cards stay out of the search itself: a subject drawn in many documents has as many cards of one
// relation, which would crowd each other out of a chunk's best few, and reach other documents' chunks.
//
// adjustPlan(plan, o): per chunk of `chunk` tokens, the references `add`ed by the spans that overlap it,
// then the plan's (perChunk per chunk, best first) less those such a span denies and those already taken,
// the first `keep` kept (-1 after the last). plan with a perChunk above keep so that the removed leave room
// for the next best. the order within a chunk's references is not seen by the model (memories share one
// position range: memory3/train.ts).

import { EngramError } from '../gpu/errors.ts';

/** a part of the stream, tokens [start, end), the references its chunks read first and those they do not read */
export interface PlanSpan {
  start: number;
  end: number;
  add: readonly number[];
  deny: readonly number[];
}

export function adjustPlan(plan: Int32Array, o: { perChunk: number; keep: number; chunk: number; spans: readonly PlanSpan[] }): Int32Array {
  const { perChunk: per, keep, chunk } = o;
  if (!(Number.isInteger(per) && Number.isInteger(keep) && Number.isInteger(chunk) && per > 0 && keep > 0 && keep <= per && chunk > 0) || plan.length % per !== 0) {
    throw new EngramError(`adjustPlan: perChunk ${per}, keep ${keep} and chunk ${chunk} must be positive integers with keep <= perChunk, and the plan's length ${plan.length} a multiple of perChunk`);
  }
  const spans = [...o.spans].sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]!.start < spans[i - 1]!.end) throw new EngramError(`adjustPlan: spans [${spans[i - 1]!.start}, ${spans[i - 1]!.end}) and [${spans[i]!.start}, ${spans[i]!.end}) overlap`);
  }
  const chunks = plan.length / per;
  const out = new Int32Array(chunks * keep).fill(-1);
  let s = 0; // the first span that ends after the chunk's start
  for (let c = 0; c < chunks; c++) {
    const [from, to] = [c * chunk, (c + 1) * chunk];
    while (s < spans.length && spans[s]!.end <= from) s++;
    const taken = new Set<number>();
    const deny = new Set<number>();
    for (let t = s; t < spans.length && spans[t]!.start < to; t++) {
      for (const r of spans[t]!.add) if (taken.size < keep) taken.add(r);
      for (const r of spans[t]!.deny) deny.add(r);
    }
    for (let j = 0; j < per && taken.size < keep; j++) {
      const r = plan[c * per + j]!;
      if (r < 0) break;
      if (!deny.has(r)) taken.add(r);
    }
    let n = 0;
    for (const r of taken) out[c * keep + n++] = r;
  }
  return out;
}
