"""PyTorch baselines for the `kernels` benchmark suite, run in the same command on the same GPU.

Prints one JSON line of metrics: torch_matmul_f32_4096_TFLOPs (TF32 off),
torch_matmul_f16_4096_TFLOPs, torch_attention_fwd_TFLOPs and torch_attention_bwd_TFLOPs
(scaled_dot_product_attention, f16, B=4 T=2048 16 heads head dim 64 causal) and torch_copy_GBps.
Timing: CUDA events, median of repeated runs after warm-up, inputs random (never zeros).
"""
import json
import sys

import torch


def median_ms(fn, warmup=5, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(1)
    torch.manual_seed(0)
    dev = "cuda"
    out = {}

    n = 1 << 28  # 1 GiB of f32
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    out["torch_copy_GBps"] = 2 * n * 4 / ms / 1e6
    del src, dst

    torch.backends.cuda.matmul.allow_tf32 = False
    N = 4096
    for dt, name in ((torch.float32, "f32"), (torch.float16, "f16")):
        a = torch.randn(N, N, device=dev, dtype=dt)
        b = torch.randn(N, N, device=dev, dtype=dt)
        ms = median_ms(lambda: a @ b)
        out[f"torch_matmul_{name}_4096_TFLOPs"] = 2 * N**3 / ms / 1e9

    B, H, T, D = 4, 16, 2048, 64
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.float16, requires_grad=True) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    flops = 4 * B * H * T * T * D / 2  # causal: half the score matrix
    ms = median_ms(lambda: sdpa(q, k, v, is_causal=True))
    out["torch_attention_fwd_TFLOPs"] = flops / ms / 1e9
    o = sdpa(q, k, v, is_causal=True)
    g = torch.randn_like(o)
    ms = median_ms(lambda: torch.autograd.grad(o, (q, k, v), g, retain_graph=True))
    out["torch_attention_bwd_TFLOPs"] = 2.5 * flops / ms / 1e9
    print(json.dumps(out))


if __name__ == "__main__":
    main()
