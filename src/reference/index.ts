// the float64 reference of every kernel: plain TypeScript, no GPU code. it is the spec the
// kernels are tested against, and is itself checked by finite differences (fd.ts).

export * from './add.ts';
export * from './adamw.ts';
export * from './attention.ts';
export * from './embedding.ts';
export * from './gradnorm.ts';
export * from './matmul.ts';
export * from './rmsnorm.ts';
export * from './rope.ts';
export * from './sort.ts';
export * from './swiglu.ts';
export * from './transpose.ts';
export * from './init.ts';
export * from './topk.ts';
export * from './membag.ts';
export * from './memsel.ts';
export * from './kmeans.ts';
export * from './xent.ts';
export { dot, gradCheck } from './fd.ts';
