// every kernel, forward and backward. model code imports kernels from here.

export { copy, fill } from './copy/copy.ts';
export { rmsnormBackward, rmsnormForward } from './rmsnorm/rmsnorm.ts';
export { addBackward, addForward } from './add/add.ts';
