// causal self-attention with grouped-query heads and an optional prefix (attend-to-all, or
// chunked: a block per chunk of queries), flash style, forward and backward. the kernels live in attention_forward.ts,
// attention_backward.ts and attention_cpu.ts (shared pieces: attention_common.ts); this module
// is the op's public face.
//
//   q (B,T,NH,HS)  k, v (B,T,NKV,HS)   the layout a fused qkv projection (B,T,(NH+2NKV)*HS)
//                                      gives after a split and a reshape: row-major, head-major
//                                      inside a token; query head h reads kv head h / (NH/NKV)
//   pk, pv (B,P,NKV,HS), optional      extra keys/values (explicit memory) that every query
//                                      sees, never masked, logically before the sequence keys
//   with { prefixChunk: C } (C > 0)    a chunked prefix (Memory³ training: each chunk of C
//   pk, pv (B,ceil(T/C)*P,NKV,HS)      queries has its own memory): block c = rows [cP, cP+P)
//                                      is seen by queries [cC, cC+C) only, never masked, before
//                                      the sequence keys. P is derived: pk rows / ceil(T/C),
//                                      which must divide (ShapeError naming pk otherwise)
//   with { prefixLen: L } (forward)    only the first L of pk's rows per batch row are keys (a
//                                      batched KV cache: rows front + max apart, L filled)
//   out (B,T,NH,HS)                    softmax(scale q k^T + causal mask) v, scale 1/sqrt(HS)
//   lse (B,NH,T) f32                   natural-log logsumexp of each row's scores, saved
//   backward: dq, dk, dv, dpk, dpv     all overwritten (dk/dv/dpk/dpv summed over the heads
//                                      sharing a kv head and over every query that sees the
//                                      key: for chunked block c, the queries of chunk c)
//
// storage dtypes f32/f16/bf16 for every tensor but lse (independently; f32 accumulation). HS:
// any even value from 2 to 128 (MAX_HS); HS % 4 == 0 is the fast path. the prefix length is the
// same for every batch row and chunk (a per-row length, to mask padded memory, is not
// supported). the chunk size C is free (any C >= 1, not tied to the kernels' query blocks: a
// block straddling chunks sees the blocks of all its chunks, masked per row); a chunked prefix
// costs about what a shared one of P rows does, plus masked prefix tiles where query blocks
// straddle chunks (C below the block size: 64 queries in the GPU forward, 8 or 16 on a CPU).
// causal by default; { causal: false } gives full attention. storage buffers per dispatch: at
// most 8 without a prefix (what every WebGPU adapter allows); with one, the dk/dv kernel binds
// 12, which needs maxStorageBuffersPerShaderStage >= 12 (Dawn on Vulkan/Metal/D3D12; browsers
// often allow 8 or 10, and launch() then throws a LimitError naming the kernel).
//
// design (details in the kernel files): online softmax over key tiles staged in workgroup
// memory, 4x4 register tiles per thread, never a T x T matrix; masked tiles are skipped. the
// backward follows FlashAttention-2: D = rowsum(dout * out) first, then dq parallel over query
// blocks and dk/dv parallel over key blocks (each walking the queries of every head in its
// group), so every output element has one writer: deterministic, no atomics (WGSL has no float
// atomics). dtypes, the prefix length and the chunk size are uniforms, not pipeline
// specializations (the presence of a prefix picks the bindings): one pipeline per (kernel, HS,
// tile), and the tile is the largest whose workgroup memory fits the
// device (at HS=64 an H100's 48 KiB and lavapipe's 32 KiB share the forward tile, 64x32, and get
// different dq and dk/dv tiles; the test file passes on both).
// on a CPU adapter (gpu.cpu, lavapipe) the forward, dq and dk/dv kernels run barrier-free
// mappings instead, a row per thread with keys or queries shared by subgroup broadcasts
// (attention_cpu.ts; same results up to summation order); tests run both mappings there.
// speed: the kernels suite times B=4 T=2048 NH=16 HS=64 causal on an H100 (notes attention_f32,
// attention_f16 of bench/results/kernels-nvidia-h100-80gb-hbm3-20261122.json); f32 math on CUDA cores
// only (no subgroup matrices).

export { MAX_HS, type AttentionOptions } from './attention_common.ts';
export { attentionForward } from './attention_forward.ts';
export { attentionBackward } from './attention_backward.ts';

/**
 * Forward FLOPs of attention, 4*HS per visible (query, key) pair (q.k and p*v, 2 each): with
 * causal, T*T/2 sequence pairs (the benchmark's convention) plus T*P prefix pairs per head (P
 * the prefix rows a query sees: a chunk's block with a chunked prefix). The backward is counted
 * as 2.5 times this.
 */
export function attentionFlops(B: number, NH: number, T: number, HS: number, P = 0, causal = true): number {
  const pairs = T * P + (causal ? (T * T) / 2 : T * T);
  return 4 * B * NH * HS * pairs;
}
