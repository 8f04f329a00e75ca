"""PyTorch baselines for the `memory` benchmark suite, run in the same command on the same GPU.

Sizes (paper defaults, shared/specs/memory-layers.md): T tokens, model dim d, n sub-keys per
half (N = n*n value rows), `heads` query heads, top-`knn` per head (bag B = heads*knn slots per
token), key dim `kdim` per head.

Prints one JSON line of metrics (the last line of stdout; numbers only):
  torch_copy_GBps                      device-to-device copy of 1 GiB f32 (bytes read + written)
  torch_embedding_bag_fwd_bf16_GBps    F.embedding_bag(idx [T,B], table [N,d], per-sample weights,
  torch_embedding_bag_fwd_f32_GBps       mode='sum'); bytes = T*B*d (rows read) + T*d (written)
  torch_embedding_bag_fwdbwd_f32_ms    the same op forward + backward (dense table grad and
                                         per-sample-weight grad), milliseconds per step
  torch_embedding_bag_fwdbwd_bf16_ms   only if this torch has a bf16 per-sample-weight backward
                                         (its CUDA kernel has dispatched f32/f64/f16 only: skipped)
  torch_memory_layer_fwd_tok_s         a Memory+ layer written here after the spec (below), bf16
  torch_memory_layer_fwdbwd_tok_s        parameters and values, softmax in fp32; tokens/s
  torch_memory_layer_bf16_bag_native   1: the bf16 layer's backward used torch's own bag backward;
                                         0: it used the per-sample-weight backward below
  torch_memory_layer_fwd_f32_tok_s     the same layer in f32 (TF32 off)
  torch_memory_layer_fwdbwd_f32_tok_s
The bag metrics read the rows of --idx/--w (raw little-endian u32 and f32, [T*B] each, written by
the Node side so both sides gather the same rows) or, without them, seeded random rows: indices
uniform in [0, N), weights a softmax of normals per group of knn. Forward timings run under
no_grad; forward+backward timings call torch.autograd.grad (nothing accumulates into .grad).

Timing: each op runs back to back for 0.5 s first (an idle H100 runs at lower clocks),
then CUDA events around regions of several back-to-back calls; the metric uses the median region.
Each metric is measured in its own try: a failure (out of memory, an op this torch lacks) prints
one line on stderr and leaves the other metrics. `--quick` runs tiny sizes (on the CPU when there
is no CUDA): a smoke run whose numbers are not the suite's metrics.
"""
import argparse
import gc
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

PAPER = dict(T=8192, d=1024, n=1024, heads=4, knn=32, kdim=512)
QUICK = dict(T=64, d=64, n=16, heads=2, knn=4, kdim=32)


def log(msg):
    print(f"memory.py: {msg}", file=sys.stderr, flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def median_ms(fn, dev, warm_s, reps, region_ms=25.0):
    """Median milliseconds per call of fn. Warm-up: calls back to back for warm_s seconds (clocks
    up, allocator primed); that also sizes a timed region to about region_ms of back-to-back calls,
    so a short op is not timed one call per CPU round trip."""
    fn()
    sync(dev)
    calls, t0 = 0, time.perf_counter()
    while True:
        for _ in range(3):
            fn()
        sync(dev)
        calls += 3
        elapsed = time.perf_counter() - t0
        if elapsed >= warm_s:
            break
    per_call = max(elapsed * 1e3 / calls, 1e-3)
    inner = max(1, min(100, int(round(region_ms / per_call))))
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            torch.cuda.synchronize()
            ms = a.elapsed_time(b)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            ms = (time.perf_counter() - t) * 1e3
        times.append(ms / inner)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------------------------------------
# bag inputs


def read_raw(path, dtype, count, what):
    """[count] 4-byte values from a raw little-endian file (u32 is read as int32: N < 2^31)."""
    if sys.byteorder != "little":
        raise SystemExit(f"memory.py: {what}: raw files are little-endian, this host is not")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != 4 * count:
        raise SystemExit(f"memory.py: {what} file {path} holds {len(data)} bytes, expected {4 * count} (4*T*heads*knn)")
    return torch.frombuffer(bytearray(data), dtype=dtype).clone()


def bag_inputs(a, N, B, seed):
    """idx [T, B] int64 and weights [T, B] f32, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    if a.idx:
        idx = read_raw(a.idx, torch.int32, a.T * B, "--idx").long()
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= N:
            raise SystemExit(f"memory.py: --idx holds slots in [{lo}, {hi}] (as int32), expected [0, {N})")
    else:
        idx = torch.randint(0, N, (a.T * B,), generator=g)
    if a.w:
        w = read_raw(a.w, torch.float32, a.T * B, "--w")
        if not bool(torch.isfinite(w).all()):
            raise SystemExit("memory.py: --w holds non-finite weights")
    else:
        w = torch.softmax(torch.randn(a.T, a.heads, a.knn, generator=g), dim=-1)
    return idx.view(a.T, B), w.reshape(a.T, B)


# ---------------------------------------------------------------------------------------------
# Memory+ layer (spec section 2): the computation of facebookresearch/memory, plain PyTorch ops


class _PerSampleWeightGrad(torch.autograd.Function):
    """Identity on y = embedding_bag(idx, values, w.detach()); its backward adds dL/dw_j =
    <g_y, values[idx_j]>, the per-sample-weight gradient torch's CUDA embedding_bag computes for
    f32/f16 tables but not bf16 ones. The table's gradient still comes from torch's own bag backward."""

    @staticmethod
    def forward(ctx, y, w, values, idx):
        ctx.save_for_backward(values, idx)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        values, idx = ctx.saved_tensors
        dw = None
        if ctx.needs_input_grad[1]:
            rows = F.embedding(idx, values)  # [T, B, d]
            dw = torch.bmm(rows, g.unsqueeze(-1)).squeeze(-1)  # fp32 accumulation inside cuBLAS
        return g, dw, None, None


def bag_backward_native(dtype, dev):
    """Whether torch's embedding_bag has a backward for per-sample weights of this dtype here."""
    try:
        table = torch.randn(8, 4, device=dev, dtype=dtype, requires_grad=True)
        idx = torch.tensor([[0, 3], [5, 7]], device=dev)
        w = torch.rand(2, 2, device=dev, dtype=dtype, requires_grad=True)
        y = F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")
        torch.autograd.grad(y.float().sum(), (table, w))
        sync(dev)
        return True
    except RuntimeError:
        return False


class MemoryPlus(torch.nn.Module):
    """out = Wo(y * silu(Ws x + bs)) + bo with y the product-key memory read of x: query Linear
    (bias) -> per head, sub-key scores of each query half -> top-k per half -> top-k of the k*k
    candidate sums -> softmax (fp32) -> weighted sum of the value rows i1*n + i2, heads summed."""

    def __init__(self, d, n, heads, knn, kdim, dev, dtype, native_bag):
        super().__init__()
        self.n, self.heads, self.knn, self.half = n, heads, knn, kdim // 2
        self.native_bag = native_bag
        f32 = dict(device=dev, dtype=torch.float32)
        # initialisation of the reference code (spec section 4): biases zero
        self.wq = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(heads * kdim, d, **f32)))
        self.bq = torch.nn.Parameter(torch.zeros(heads * kdim, **f32))
        bound = 1 / math.sqrt(kdim)
        self.keys = torch.nn.Parameter(torch.empty(heads, 2, n, self.half, **f32).uniform_(-bound, bound))
        self.values = torch.nn.Parameter(torch.empty(n * n, d, **f32).normal_(0, d**-0.5))
        self.ws = torch.nn.Parameter(torch.empty(d, d, **f32).normal_(0, d**-0.5))
        self.bs = torch.nn.Parameter(torch.zeros(d, **f32))
        self.wo = torch.nn.Parameter(torch.empty(d, d, **f32).normal_(0, d**-0.5))
        self.bo = torch.nn.Parameter(torch.zeros(d, **f32))
        self.to(dtype)

    def indices_weights(self, x):
        """slots [T, heads*knn] (int64) and their softmax weights [T, heads*knn] (values' dtype)."""
        T, H, k, n, half = x.shape[0], self.heads, self.knn, self.n, self.half
        q = F.linear(x, self.wq, self.bq)  # [T, H*kdim]; per head: first half, second half
        q = q.view(T, 2 * H, half).transpose(0, 1)  # [2H, T, half], batch h*2 + j
        s = torch.bmm(q, self.keys.view(2 * H, n, half).transpose(1, 2))  # [2H, T, n] raw dot products
        v, i = s.topk(k, dim=-1)  # [2H, T, k]
        v, i = v.reshape(H, 2, T, k), i.reshape(H, 2, T, k)
        cand = v[:, 0].unsqueeze(-1) + v[:, 1].unsqueeze(-2)  # [H, T, k, k]
        slot = i[:, 0].unsqueeze(-1) * n + i[:, 1].unsqueeze(-2)  # first half picks the row
        scores, pos = cand.reshape(H, T, k * k).topk(k, dim=-1)  # [H, T, k]
        slot = slot.reshape(H, T, k * k).gather(-1, pos)
        w = torch.softmax(scores.float(), dim=-1).to(self.values.dtype)
        return slot.permute(1, 0, 2).reshape(T, H * k), w.permute(1, 0, 2).reshape(T, H * k)

    def read(self, idx, w):
        """y [T, d] = sum_j w_j values[idx_j] (EmbeddingBag sum; heads summed)."""
        if self.native_bag or not torch.is_grad_enabled() or not w.requires_grad:
            return F.embedding_bag(idx, self.values, per_sample_weights=w, mode="sum")
        y = F.embedding_bag(idx, self.values, per_sample_weights=w.detach(), mode="sum")
        return _PerSampleWeightGrad.apply(y, w, self.values.detach(), idx)

    def forward(self, x):
        idx, w = self.indices_weights(x)
        y = self.read(idx, w)
        return F.linear(y * F.silu(F.linear(x, self.ws, self.bs)), self.wo, self.bo)


# ---------------------------------------------------------------------------------------------
# sections: each returns {metric: value}; main runs each in its own try


def copy_section(a, dev):
    n = (1 << 18) if a.quick else (1 << 28)  # 1 GiB of f32
    src = torch.randn(n, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), dev, a.warm, a.reps)
    return {"torch_copy_GBps": 2 * n * 4 / ms / 1e6}


def bag_fwd_section(a, dev, dtype, name, idx, w, N):
    T, B = idx.shape
    table = torch.randn(N, a.d, device=dev, dtype=dtype)
    ww = w.to(dtype)
    with torch.no_grad():
        ms = median_ms(lambda: F.embedding_bag(idx, table, per_sample_weights=ww, mode="sum"), dev, a.warm, a.reps)
    eb = table.element_size()
    return {f"torch_embedding_bag_fwd_{name}_GBps": (T * B * a.d + T * a.d) * eb / ms / 1e6}


def bag_fwdbwd_section(a, dev, dtype, name, idx, w, N):
    T = idx.shape[0]
    table = torch.randn(N, a.d, device=dev, dtype=dtype, requires_grad=True)  # dense grad (sparse=False)
    ww = w.to(dtype, copy=True).requires_grad_()
    g = torch.randn(T, a.d, device=dev, dtype=dtype)

    def step():
        y = F.embedding_bag(idx, table, per_sample_weights=ww, mode="sum")
        torch.autograd.grad(y, (table, ww), g)

    return {f"torch_embedding_bag_fwdbwd_{name}_ms": median_ms(step, dev, a.warm, a.reps)}


def layer_sections(a, dev, dtype, suffix, out):
    """Forward and forward+backward tokens/s of one MemoryPlus layer, each in its own try."""
    torch.manual_seed(1)
    native = dtype != torch.bfloat16 or bag_backward_native(dtype, dev)
    layer = MemoryPlus(a.d, a.n, a.heads, a.knn, a.kdim, dev, dtype, native)
    x = torch.randn(a.T, a.d, device=dev, dtype=dtype)  # scale of an RMSNorm output
    try:
        def fwd():
            with torch.no_grad():
                layer(x)

        out[f"torch_memory_layer_fwd{suffix}_tok_s"] = a.T / (median_ms(fwd, dev, a.warm, a.reps) / 1e3)
    except Exception as e:  # reported; the other metrics go on
        log(f"torch_memory_layer_fwd{suffix}_tok_s failed: {type(e).__name__}: {first_line(e)}")
    free(dev)
    try:
        xg = x.detach().clone().requires_grad_()  # x gets its gradient too, as inside a model
        wrt = [xg] + list(layer.parameters())
        g = torch.randn(a.T, a.d, device=dev, dtype=dtype)

        def fwdbwd():
            torch.autograd.grad(layer(xg), wrt, g)

        out[f"torch_memory_layer_fwdbwd{suffix}_tok_s"] = a.T / (median_ms(fwdbwd, dev, a.warm, a.reps) / 1e3)
        if dtype == torch.bfloat16:
            out["torch_memory_layer_bf16_bag_native"] = 1 if native else 0
    except Exception as e:
        log(f"torch_memory_layer_fwdbwd{suffix}_tok_s failed: {type(e).__name__}: {first_line(e)}")


def first_line(e):
    s = str(e).strip().split("\n")[0]
    return s[:300]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for k in PAPER:
        p.add_argument(f"--{k}", type=int, default=None, help=f"default {PAPER[k]} ({QUICK[k]} with --quick)")
    p.add_argument("--idx", help="raw little-endian u32 [T*heads*knn] slot indices for the bag metrics")
    p.add_argument("--w", help="raw little-endian f32 [T*heads*knn] per-sample weights for the bag metrics")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated indices/weights")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU when there is no CUDA): a smoke run")
    a = p.parse_args(argv)
    for k, v in (QUICK if a.quick else PAPER).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.warm = 0.02 if a.quick else 0.5
    a.reps = 3 if a.quick else 9
    if min(a.T, a.d, a.n, a.heads, a.knn, a.kdim) < 1 or a.kdim % 2 or a.knn > a.n:
        p.error("sizes must be positive, kdim even and knn <= n")
    return a


def main():
    a = parse_args(sys.argv[1:])
    if torch.cuda.is_available():
        dev = torch.device("cuda")
    elif a.quick:
        dev = torch.device("cpu")
    else:
        log("no CUDA device (--quick runs tiny sizes on the CPU)")
        sys.exit(1)
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 means f32
    torch.manual_seed(0)
    N, B = a.n * a.n, a.heads * a.knn
    log(f"T={a.T} d={a.d} N={N} bag={B} kdim={a.kdim} on {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    idx_cpu, w_cpu = bag_inputs(a, N, B, a.seed)
    out = {}

    def section(names, fn, *args):
        try:
            out.update(fn(*args))
        except Exception as e:  # reported; the other metrics go on
            log(f"{names} failed: {type(e).__name__}: {first_line(e)}")
        free(dev)

    section("torch_copy_GBps", copy_section, a, dev)
    idx, w = idx_cpu.to(dev), w_cpu.to(dev)
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        section(f"torch_embedding_bag_fwd_{name}_GBps", bag_fwd_section, a, dev, dtype, name, idx, w, N)
    section("torch_embedding_bag_fwdbwd_f32_ms", bag_fwdbwd_section, a, dev, torch.float32, "f32", idx, w, N)
    if bag_backward_native(torch.bfloat16, dev):
        section("torch_embedding_bag_fwdbwd_bf16_ms", bag_fwdbwd_section, a, dev, torch.bfloat16, "bf16", idx, w, N)
    else:
        log("torch_embedding_bag_fwdbwd_bf16_ms skipped: this torch has no bf16 per-sample-weight backward")
    del idx, w
    free(dev)
    section("torch_memory_layer (bf16)", lambda: layer_sections(a, dev, torch.bfloat16, "", out) or {})
    section("torch_memory_layer (f32)", lambda: layer_sections(a, dev, torch.float32, "_f32", out) or {})

    for k in [k for k, v in out.items() if not math.isfinite(v)]:
        log(f"{k} dropped: not finite ({out.pop(k)})")
    print(json.dumps(out))
    if not out:
        log("no metric measured")
        sys.exit(1)


if __name__ == "__main__":
    main()
