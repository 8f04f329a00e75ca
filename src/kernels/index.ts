// every kernel, forward and backward. model code imports kernels from here.

export { copy, fill } from './copy/copy.ts';
export { appendRows } from './copy/append_rows.ts';
export { rmsnormBackward, rmsnormForward } from './rmsnorm/rmsnorm.ts';
export { addColumnSums } from './reduce/reduce.ts';
export { addBackward, addForward, scale } from './add/add.ts';
export { checkIds, embeddingBackward, embeddingForward } from './embedding/embedding.ts';
export { createRopeTable, ropeBackward, ropeForward, type RopeOptions } from './rope/rope.ts';
export { swigluBackward, swigluForward, type GateUp, type GateUpGrad } from './swiglu/swiglu.ts';
export { attentionBackward, attentionFlops, attentionForward, type AttentionOptions } from './attention/attention.ts';
export { IGNORE_INDEX, xentBackward, xentForward, type XentBackwardOptions } from './xent/xent.ts';
export { adamwStep, type AdamwGroup, type AdamwOptions, type AdamwParam } from './adamw/adamw.ts';
export { clipGrads, gradNorm, type GradNormOptions } from './gradnorm/gradnorm.ts';
export { scanExclusive, segmentStarts, sortPairs, type SortOptions } from './sort/sort.ts';
export { linearBackward, linearForward, matmul, matmulFlops, type MatmulOptions } from './matmul/matmul.ts';
export { matmulSubgroup } from './matmul/matmul_subgroup.ts';
export { swapAxes, transpose } from './transpose/transpose.ts';
export { fillNormal, fillUniform } from './init/init.ts';
export { topkBackward, topkForward } from './topk/topk.ts';
export { productTopkBackward, productTopkForward } from './topk/product_topk.ts';
export { MEMSEL_MAX_K, MEMSEL_MAX_T, MEMSEL_NONE, memselForward, type MemselGroup, type MemselOptions } from './memsel/memsel.ts';
export { chunkRows, membagBackward, membagForward, type ValueChunks } from './membag/membag.ts';
export { clearRows, markRows } from './rowmask/rowmask.ts';
export { KMEANS_MAX_C, KMEANS_MAX_D, kmeansAssign } from './kmeans/kmeans.ts';
