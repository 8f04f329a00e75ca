"""PyTorch baselines for the `train` benchmark suite: the same models trained and decoded in PyTorch.

    python3 bench/torch/train.py --config dense=<file> --config memory=<file> [--batch 8 --seq 1024
        --prompt 32 --new 256 --steps 7 --warmup 2 --decode-reps 3] [--quick]

Each --config NAME=FILE is an engram model config as parseModelConfig returns it (bench/suites/
train.ts writes them: every default filled, memory.layers explicit). The model is transformers'
LlamaForCausalLM from a LlamaConfig of the same sizes (tied embeddings, RMSNorm eps, RoPE theta,
grouped-query heads); in the blocks of memory.layers the `mlp` is replaced by a Memory+ layer
written here after src/model/memory_layer.ts and bench/torch/memory.py, all of them reading one
shared value table (a parameter of the model, f32 like the others).

Prints one JSON line of metrics (the last line of stdout; numbers only), for each NAME:
  torch_params_NAME              trainable parameters (the tied embedding and the table once)
  torch_train_tok_s_NAME         training tokens/s: B sequences of T tokens per step, eager,
                                   torch.autocast(bfloat16) over f32 parameters, fused AdamW (lr
                                   3e-4, values 10 lr, weight decay 0.1, betas 0.9/0.95) after
                                   clipping each group (model, values) to norm 1.0 as engram does;
                                   median wall time of single steps (synchronised) after --warmup
                                   seconds of steps (an idle H100 runs at lower clocks)
  torch_peak_gpu_bytes_NAME      torch.cuda.max_memory_allocated over the model's creation and
                                   its training steps (less what was allocated before)
  torch_peak_reserved_bytes_NAME torch.cuda.max_memory_reserved, the same span (the allocator's cache)
  torch_decode_tok_s_NAME        batch 1, a --prompt-token prompt, --new tokens greedy with the KV
                                   cache (model.generate, use_cache=True, weights cast to bf16):
                                   new tokens / wall time of the call, median of --decode-reps
                                   after a warm-up call
Each model is measured in its own try: a failure prints one line on stderr (with "failed") and
leaves the other metrics.

Without CUDA the script stops unless --quick (tiny sizes, a smoke run: the numbers are not the
suite's). Without transformers it stops too, unless --quick, where a plain PyTorch Llama of the
same structure (below) stands in, so that the plumbing can be tested on a machine without it.
"""
import argparse
import gc
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError:
    transformers = None

LR = 3e-4
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
MAX_NORM = 1.0


def log(msg):
    print(f"train.py: {msg}", file=sys.stderr, flush=True)


def first_line(e):
    return str(e).strip().split("\n")[0][:300]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# the Memory+ layer (src/model/memory_layer.ts): q = x Wq^T + bq; per head the two query halves
# (g = 2h + half) dot their n sub-keys; top-k per half; the k best of the k x k candidate sums;
# softmax (f32); y = sum over heads and picks of w * values[i1 n + i2]; out = Wo (y silu(Ws x + bs)) + bo


class MemoryPlus(nn.Module):
    def __init__(self, d, m, values):
        super().__init__()
        self.d, self.heads, self.n, self.k, self.half = d, m["heads"], m["nKeys"], m["topk"], m["keyDim"] // 2
        self.gated = m.get("gated", True)
        H, dk = self.heads, m["keyDim"]
        self.query_proj = nn.Linear(d, H * dk, bias=True)
        nn.init.xavier_uniform_(self.query_proj.weight)
        nn.init.zeros_(self.query_proj.bias)
        self.keys = nn.Parameter(torch.empty(2 * H, self.n, self.half).uniform_(-(dk**-0.5), dk**-0.5))
        self.values = values  # shared by every memory layer: model.parameters() lists it once
        if self.gated:
            self.swilu_projection = nn.Linear(d, d, bias=True)
            self.value_proj = nn.Linear(d, d, bias=True)
            for lin in (self.swilu_projection, self.value_proj):
                nn.init.normal_(lin.weight, std=d**-0.5)
                nn.init.zeros_(lin.bias)

    def read_indices(self, x):
        """slots (N, H k) int64 and softmax weights (N, H k) in the table's dtype, for x (N, d)"""
        N, H, k, n, half = x.shape[0], self.heads, self.k, self.n, self.half
        q = self.query_proj(x).view(N, 2 * H, half).transpose(0, 1)  # (2H, N, half)
        s = torch.bmm(q, self.keys.transpose(1, 2))  # (2H, N, n) raw dot products
        v, i = s.topk(k, dim=-1)
        v, i = v.view(H, 2, N, k), i.view(H, 2, N, k)
        cand = (v[:, 0].unsqueeze(-1) + v[:, 1].unsqueeze(-2)).reshape(H, N, k * k)
        slot = (i[:, 0].unsqueeze(-1) * n + i[:, 1].unsqueeze(-2)).reshape(H, N, k * k)
        scores, pos = cand.topk(k, dim=-1)  # (H, N, k)
        slot = slot.gather(-1, pos)
        w = torch.softmax(scores.float(), dim=-1).to(self.values.dtype)
        return slot.permute(1, 0, 2).reshape(N, H * k), w.permute(1, 0, 2).reshape(N, H * k)

    def forward(self, x):
        shape = x.shape  # (B, T, d) inside a Llama block (T = 1 when decoding)
        x2 = x.reshape(-1, self.d)
        idx, w = self.read_indices(x2)
        y = F.embedding_bag(idx, self.values, per_sample_weights=w, mode="sum")
        if not self.gated:
            return y.reshape(shape).to(x.dtype)
        out = self.value_proj(y * F.silu(self.swilu_projection(x2)))
        return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# a plain PyTorch Llama, only for --quick without transformers (same structure as LlamaForCausalLM:
# RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU, tied head)


class _Norm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class _Mlp(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, nh, nkv = c["dim"], c["heads"], c["kvHeads"]
        self.nh, self.nkv, self.hs = nh, nkv, d // nh
        self.input_layernorm, self.post_attention_layernorm = _Norm(d, c["normEps"]), _Norm(d, c["normEps"])
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, nkv * self.hs, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, nkv * self.hs, bias=False), nn.Linear(d, d, bias=False)
        self.mlp = _Mlp(d, c["ffnHidden"])

    def forward(self, h, cos, sin, cache):
        B, T, d = h.shape
        n1 = self.input_layernorm(h)
        q = self.q_proj(n1).view(B, T, self.nh, self.hs).transpose(1, 2)
        k = self.k_proj(n1).view(B, T, self.nkv, self.hs).transpose(1, 2)
        v = self.v_proj(n1).view(B, T, self.nkv, self.hs).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # a new token attends to every cached position; a prompt pass (no cache before) is causal
        att = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        h = h + self.o_proj(att.transpose(1, 2).reshape(B, T, d))
        return h + self.mlp(self.post_attention_layernorm(h))


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class PlainLlama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocabSize"], c["dim"])
        self.layers = nn.ModuleList([_Block(c) for _ in range(c["layers"])])
        self.norm = _Norm(c["dim"], c["normEps"])
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
        hs = c["dim"] // c["heads"]
        inv = 1.0 / (c["ropeTheta"] ** (torch.arange(0, hs, 2).float() / hs))
        ang = torch.arange(c["maxSeqLen"]).float()[:, None] * inv[None, :]
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1), persistent=False)

    def logits(self, ids, caches=None, pos0=0):
        T = ids.shape[1]
        cos, sin = self.cos[pos0:pos0 + T].to(self.embed_tokens.weight.dtype), self.sin[pos0:pos0 + T].to(self.embed_tokens.weight.dtype)
        h = self.embed_tokens(ids)
        for i, blk in enumerate(self.layers):
            h = blk(h, cos, sin, caches[i] if caches is not None else None)
        return F.linear(self.norm(h), self.embed_tokens.weight)

    def loss(self, ids):
        logits = self.logits(ids)
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    @torch.no_grad()
    def greedy(self, prompt, new):
        caches = [[] for _ in self.layers]
        ids, pos, out = prompt, 0, []
        for _ in range(new):
            nxt = self.logits(ids, caches, pos)[:, -1].argmax(-1, keepdim=True)
            pos += ids.shape[1]
            ids = nxt
            out.append(nxt)
        return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------------------------
# building the models


def hf_model(c):
    d, nh = c["dim"], c["heads"]
    kw = dict(
        vocab_size=c["vocabSize"],
        hidden_size=d,
        intermediate_size=c["ffnHidden"],
        num_hidden_layers=c["layers"],
        num_attention_heads=nh,
        num_key_value_heads=c["kvHeads"],
        max_position_embeddings=c["maxSeqLen"],
        rms_norm_eps=c["normEps"],
        tie_word_embeddings=bool(c["tiedEmbeddings"]),
        attention_bias=False,
        mlp_bias=False,
        # random ids: no token may end a generation early
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    theta = float(c["ropeTheta"])
    try:  # transformers 5: rope_parameters; 4.x: rope_theta (10000 is both versions' default)
        cfg = LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    except Exception as e:  # a version whose config rejects rope_parameters
        log(f"LlamaConfig refused rope_parameters ({type(e).__name__}: {first_line(e)}); using rope_theta")
        cfg = LlamaConfig(**kw, rope_theta=theta)
    model = LlamaForCausalLM(cfg)
    # check that the RoPE frequencies are the engram config's, whichever keyword this version read
    inv = getattr(getattr(model.model, "rotary_emb", None), "inv_freq", None)
    hs = d // nh
    if inv is not None and hs > 2:
        want = theta ** (-2 / hs)
        if not math.isclose(float(inv[1]), want, rel_tol=1e-4):
            raise RuntimeError(f"LlamaConfig RoPE: inv_freq[1] = {float(inv[1])}, expected {want} (theta {theta})")
    log(f"LlamaForCausalLM: attention {getattr(model.config, '_attn_implementation', '?')}, RoPE inv_freq {'checked' if inv is not None else 'not found (unchecked)'}")
    return model


def build(c):
    """(model, loss(ids), decode(prompt, new) -> ids (1, new)) for engram config c"""
    use_hf = transformers is not None
    model = hf_model(c) if use_hf else PlainLlama(c)
    layers = model.model.layers if use_hf else model.layers
    m = c.get("memory")
    if m:
        if m.get("qkNorm"):
            raise SystemExit("train.py: memory.qkNorm is not mirrored here")
        # one table for every memory layer, N(0, d^-0.5) as engram's ValueTable
        values = nn.Parameter(torch.empty(m["nKeys"] ** 2, c["dim"]).normal_(0, c["dim"] ** -0.5))
        for i in m["layers"]:
            layers[i].mlp = MemoryPlus(c["dim"], m, values)
        model.memory_values = values

    if use_hf:
        def loss(ids):
            return model(input_ids=ids, labels=ids, use_cache=False).loss

        def decode(prompt, new):
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            return out[:, prompt.shape[1]:]
    else:
        def loss(ids):
            return model.loss(ids)

        def decode(prompt, new):
            return model.greedy(prompt, new)

    return model, loss, decode


def optimizer(model, dev):
    """fused AdamW with engram's two groups (the value table at 10 lr), and its clipping"""
    table = getattr(model, "memory_values", None)
    values = [p for p in model.parameters() if p is table]
    rest = [p for p in model.parameters() if p is not table]
    groups = [{"params": rest, "lr": LR}] + ([{"params": values, "lr": 10 * LR}] if values else [])
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=1e-8, weight_decay=WEIGHT_DECAY, fused=fused)

    def clip():
        for g in groups:
            torch.nn.utils.clip_grad_norm_(g["params"], MAX_NORM)

    return opt, clip


# ---------------------------------------------------------------------------------------------
# measuring


def bench(name, c, a, dev, out):
    torch.manual_seed(1)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    model, loss_fn, decode = build(c)
    model.to(dev).train()
    out[f"torch_params_{name}"] = sum(p.numel() for p in model.parameters())
    opt, clip = optimizer(model, dev)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, c["vocabSize"], (a.batch, a.seq), generator=g).to(dev)
    last = [math.nan]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            loss = loss_fn(ids)
        loss.backward()
        clip()
        opt.step()
        last[0] = loss.detach()

    step()
    sync(dev)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.warmup:
        step()
        sync(dev)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync(dev)
        times.append(time.perf_counter() - t)
    times.sort()
    sec = times[len(times) // 2]
    out[f"torch_train_tok_s_{name}"] = a.batch * a.seq / sec
    if dev.type == "cuda":
        out[f"torch_peak_gpu_bytes_{name}"] = torch.cuda.max_memory_allocated() - base
        out[f"torch_peak_reserved_bytes_{name}"] = torch.cuda.max_memory_reserved()
    log(f"{name}: {out[f'torch_params_{name}']} parameters, step {sec * 1e3:.1f} ms ({a.batch}x{a.seq}), loss {float(last[0]):.3f}")

    # decoding: the optimizer state goes, the weights become bf16
    opt = None  # step() holds it through this cell
    for p in model.parameters():
        p.grad = None
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    model.to(torch.bfloat16).eval()
    prompt = torch.randint(0, c["vocabSize"], (1, a.prompt), generator=torch.Generator().manual_seed(11)).to(dev)

    def timed_decode():
        sync(dev)
        t = time.perf_counter()
        with torch.no_grad():
            new = decode(prompt, a.new)
        sync(dev)
        if new.shape[1] != a.new:
            raise RuntimeError(f"generate returned {new.shape[1]} new tokens, expected {a.new}")
        return time.perf_counter() - t

    timed_decode()
    dts = sorted(timed_decode() for _ in range(a.decode_reps))
    out[f"torch_decode_tok_s_{name}"] = a.new / dts[len(dts) // 2]
    log(f"{name}: decode {out[f'torch_decode_tok_s_{name}']:.1f} tok/s")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", required=True, metavar="NAME=FILE", help="an engram model config (parsed), repeatable")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--steps", type=int, default=7, help="timed training steps (the median is reported)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of training steps before timing")
    p.add_argument("--decode-reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: CPU without CUDA, a plain Llama without transformers")
    a = p.parse_args(argv)
    a.models = []
    for spec in a.config:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            p.error(f"--config {spec}: expected NAME=FILE")
        with open(path) as f:
            a.models.append((name, json.load(f)))
    if min(a.batch, a.seq, a.prompt, a.new, a.steps, a.decode_reps) < 1:
        p.error("sizes and counts must be positive")
    for name, c in a.models:
        if a.seq > c["maxSeqLen"] or a.prompt + a.new > c["maxSeqLen"]:
            p.error(f"{name}: --seq {a.seq} and --prompt + --new {a.prompt + a.new} must fit maxSeqLen {c['maxSeqLen']}")
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
    if transformers is None and not a.quick:
        log("transformers is not installed (pip install transformers); --quick uses a plain PyTorch Llama instead")
        sys.exit(1)
    where = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    impl = f"transformers {transformers.__version__} LlamaForCausalLM" if transformers else "plain PyTorch Llama (no transformers)"
    log(f"{impl} on {where}, torch {torch.__version__}; B={a.batch} T={a.seq}, decode {a.prompt}+{a.new}")
    out = {}
    for name, c in a.models:
        try:
            bench(name, c, a, dev, out)
        except Exception as e:  # reported; the other model goes on
            log(f"{name} failed: {type(e).__name__}: {first_line(e)}")
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for k in [k for k, v in out.items() if not math.isfinite(v)]:
        log(f"{k} dropped: not finite ({out.pop(k)})")
    print(json.dumps(out))
    if not out:
        log("no metric measured")
        sys.exit(1)


if __name__ == "__main__":
    main()
