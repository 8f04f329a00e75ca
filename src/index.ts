// engram's public API. everything a user imports comes through here.

export { Gpu, type GpuFeatures, type GpuOptions, type MemoryStats, type SubgroupMatrixConfig } from './gpu/device.ts';
export { busOf, openGpus } from './gpu/multi.ts';
export { Arena, ScratchPool } from './gpu/buffers.ts';
export { Tensor } from './gpu/tensor.ts';
export { GpuTimer } from './gpu/timing.ts';
export { DTYPES, type DType } from './gpu/dtype.ts';
export {
  DeviceLostError,
  EngramError,
  GpuValidationError,
  LimitError,
  NoAdapterError,
  OutOfMemoryError,
  ShaderCompileError,
  ShapeError,
} from './gpu/errors.ts';
export * as kernels from './kernels/index.ts';
export { MemoryLayer, type MemoryLayerConfig } from './model/memory_layer.ts';
export { ValueTable, type ValueTableOptions } from './model/value_table.ts';
export { ShardedValueTable, type ExchangeDType, type ValueSharding } from './model/sharded_values.ts';
export { memoryStats, tokenReads, type MemoryReadStats } from './model/memory_stats.ts';
export { type Param } from './model/param.ts';
export { AdamW, type OptimizerConfig } from './train/optimizer.ts';
export { ShardedAdamW } from './train/sharded_optimizer.ts';
export { Transformer } from './model/transformer.ts';
export { parseModelConfig, centredLayers, ModelConfigError, type ModelConfig, type MemoryConfig } from './model/config.ts';
export { loadModel, saveModel } from './model/checkpoint.ts';
export { Trainer, optimizerFor, type Batch, type Optimizer, type StepResult } from './train/trainer.ts';
export { Tokenizer, trainTokenizer, type TrainTokenizerOptions } from './data/tokenizer.ts';
export { type KvCache, type TrainMemory, type AttentionInputs, type AttentionRows } from './model/transformer.ts';
export { generate, greedyBatch, sample, type GenerateOptions, type SampleOptions } from './infer/generate.ts';
export { trainLoop, saveTraining, resumeTraining, type LoopOptions, type LogLine } from './train/loop.ts';
export { buildCorpus, writeCorpus, splitDocuments, DOC_SEPARATOR, CORPUS_SOURCES, GCIDE_PATH, type Corpus, type CorpusOptions, type CorpusSource } from './data/corpus.ts';
export { loadFacts, statements, questions, questionText, FACT_RELATIONS, type Fact, type Question } from './data/facts.ts';
export { MemoryBank, MemoryBankError, type BankModel, type BankManifest, type NewReference, type SearchHit } from './memory3/bank.ts';
export { encodeMemory, decodeMemory, memoryBytes, type SparseMemory } from './memory3/blob.ts';
export { writeMemories, encodeReferences, defaultMemoryLayers, modelFingerprint, referenceTokens, REFERENCE_PREFIX, type WriteOptions, type WrittenMemory } from './memory3/write.ts';
export { MemoryReader, type ReadOptions, type ChunkInfo, type MemoryGenerateOptions } from './memory3/read.ts';
export { overlap, leaks } from './memory3/overlap.ts';
export { TokenBm25, planRetrieval, type RetrievalPlanOptions } from './memory3/bm25.ts';
export { MemoryBatcher, type StageTwoOptions } from './memory3/train.ts';
