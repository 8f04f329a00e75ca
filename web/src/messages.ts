// the messages between the demo page (main.ts) and its worker (worker.ts), every kind typed.

/** page -> worker: load the files (absolute URLs), then generate */
export type ToWorker =
  | { type: 'load'; model: string; tokenizer: string; bank: string }
  | { type: 'generate'; prompt: string; memory: boolean; maxNew: number; temperature: number; seed: number };

/** one Memory+ head's strongest picks for the last position of a step: value-table slots and their weights */
export interface HeadPicks {
  slots: number[];
  weights: number[];
}

/** one Memory+ block's reads for the position that produced a token */
export interface SlotRead {
  layer: number;
  heads: HeadPicks[];
}

/** a retrieved reference, as the page shows it */
export interface RefView {
  id: string;
  text: string;
  score: number;
}

/** what a chunk retrieved (read.ts ChunkInfo) */
export interface ChunkView {
  start: number;
  end: number;
  query: string;
  retrieved: RefView[];
}

/** worker -> page */
export type FromWorker =
  | { type: 'status'; text: string }
  | { type: 'ready'; adapter: string; cpu: boolean; model: string; memoryLayers: number[]; bank: { references: number; dtype: string; layers: number[] } }
  | { type: 'start'; promptTokens: number }
  | { type: 'chunk'; chunk: ChunkView }
  | { type: 'token'; index: number; id: number; piece: string; text: string; slots: SlotRead[] }
  | { type: 'done'; tokens: number; seconds: number }
  | { type: 'error'; message: string };
