"""PyTorch parity for engram's model (llm.c's test_gpt2 in spirit): golden values for tests/parity.test.ts.

    python3 bench/torch/parity.py <dir> [--device cpu|cuda] [--dtype float64|float32]

<dir> is what scripts/parity_make.ts writes: model/model.safetensors + model/config.json (an HF
LlamaConfig with engram's own config under "engram"), batch.json {ids, targets} (B x T) and
train.json {lr, steps, schedule {warmup, steps, minRatio}}. Needs only torch (no numpy,
transformers or safetensors): the safetensors file is read and written by hand here.

The model is rebuilt in plain PyTorch after src/model/transformer.ts and the float64 references
src/reference/llama.ts and src/reference/pkm.ts:
  h = embed[ids]; per block: h += Wo attn(rope(Wq n1), rope(Wk n1), Wv n1)   n1 = RMSNorm(h)
                             h += FFN(n2)                                     n2 = RMSNorm(h)
  FFN = down(silu(gate n2) * up n2), or the block's Memory+ layer; logits = lm_head RMSNorm(h)
  RMSNorm x * rsqrt(mean x^2 + eps) * w; RoPE in HF's rotate-half layout, theta_i = base^(-2i/HS);
  causal attention, scale 1/sqrt(HS), query head h reads kv head h // (NH / NKV) (HF repeat_kv);
  loss = mean cross-entropy.
  Memory+ (shared/specs/memory-layers.md): q = x Wq^T + bq (T, H dk); half g = 2h + half of head h
  dots the sub-keys keys[g n : (g+1) n] (raw dot products, no scaling); top-k per half (value
  desc, index asc); per (t, h) the k best of the k x k candidates v1[a] + v2[b] (score desc, then
  slot asc; slot = i1[a] n + i2[b]); softmax over those k scores; y = sum over heads and picks of
  w * values[slot] (one table, model.memory_values, shared by every memory layer);
  out = Wo (y * silu(Ws x + bs)) + bo.
Gradients by autograd (the selection is integer: no gradient, as in engram).

Training: `steps` steps on the same batch, as engram's Trainer + AdamW (src/train): zero grads,
forward/backward, then per group ('values' = model.memory_values, 'model' = everything else)
scale = min(1, 1 / (norm + 1e-6)) with the group's global gradient norm, and torch AdamW (decoupled
weight decay 0.1 on every parameter, betas (0.9, 0.95), eps 1e-8, bias-corrected) with lr x
lrFactor(s) (values: 10 x lr), s = 1..steps. The loss recorded for a step is its forward's.

Writes <dir>/golden.safetensors, every tensor F32 (computed in --dtype, float64 by default):
  logits [B*T, V], loss [1], grad.<param> for every parameter (checkpoint names and shapes; the
  value table as grad.model.memory_values), steps_loss [steps], steps_grad_norm_model [steps],
  steps_grad_norm_values [steps] (each step's group gradient norms before clipping).
It also prints the smallest top-k selection margin seen (forward and every training step): the
f32 GPU selects the same slots as this float64 model only where that margin is well above f32
rounding.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

VALUES = "model.memory_values"


def log(msg):
    print(f"parity.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- safetensors, by hand

def read_safetensors(path):
    """{name: float64 CPU tensor}: 8-byte LE header length, JSON header, raw LE data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            vals = struct.unpack(f"<{len(buf) // 4}f", buf)
        elif dtype == "F16":
            vals = struct.unpack(f"<{len(buf) // 2}e", buf)
        elif dtype == "BF16":
            bits = struct.unpack(f"<{len(buf) // 2}H", buf)
            vals = struct.unpack(f"<{len(bits)}f", struct.pack(f"<{len(bits)}I", *[b << 16 for b in bits]))
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")
        shape = info["shape"]
        if math.prod(shape) != len(vals):
            raise ValueError(f"{path}: tensor {name} has {len(vals)} values for shape {shape}")
        out[name] = torch.tensor(vals, dtype=torch.float64).reshape(shape)
    return out


def write_safetensors(path, tensors):
    """F32 tensors: header keys sorted, data contiguous in that order, header padded with spaces to 8 bytes."""
    names = sorted(tensors)
    header, blobs, at = {}, [], 0
    for name in names:
        t = tensors[name].detach().to("cpu", torch.float64).contiguous()
        vals = t.reshape(-1).tolist()
        blob = struct.pack(f"<{len(vals)}f", *vals)
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    # build the JSON by hand so the key order is the sorted one whatever json does
    parts = ['"__metadata__":{"format":"pt"}'] + [f"{json.dumps(k)}:{json.dumps(header[k], separators=(',', ':'))}" for k in names]
    text = ("{" + ",".join(parts) + "}").encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the model

class Margins:
    """the smallest gap between the k-th and (k+1)-th candidate of every top-k (selection robustness)"""

    def __init__(self):
        self.half = math.inf
        self.product = math.inf

    def see(self, kind, sorted_scores, k):
        if sorted_scores.shape[-1] <= k:
            return
        gap = (sorted_scores[..., k - 1] - sorted_scores[..., k]).min().item()
        setattr(self, kind, min(getattr(self, kind), gap))


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(T, HS, base, dtype, device):
    half = HS // 2
    theta = torch.tensor([base ** (-2 * i / HS) for i in range(half)], dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * theta[None, :]
    return ang.cos().to(device, dtype), ang.sin().to(device, dtype)


def rope(x, cos, sin):
    """x (B, T, NH, HS), rotate-half: out[i] = x[i] c - x[i+H] s, out[i+H] = x[i] s + x[i+H] c"""
    half = x.shape[-1] // 2
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)


def attention(q, k, v, NH, NKV):
    """q (B, T, NH, HS), k, v (B, T, NKV, HS): causal, GQA"""
    B, T, _, HS = q.shape
    rep = NH // NKV
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, NH, T, HS)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(HS)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, -math.inf)
    p = torch.softmax(s, dim=-1)
    return (p @ v).transpose(1, 2).reshape(B, T, NH * HS)


def topk_desc_index_asc(s, k):
    """indices (..., k) of the k largest of s along the last dim: value desc, index asc on ties"""
    with torch.no_grad():
        srt, order = torch.sort(s, dim=-1, descending=True, stable=True)
    return order[..., :k], srt


def memory_layer(x, P, at, table, m, margins):
    """Memory+ layer on x (N, d); P the parameters, `at` its name prefix (model.layers.{i}.mlp)"""
    N, d = x.shape
    H, n, k, dk = m["heads"], m["nKeys"], m["topk"], m["keyDim"]
    half = dk // 2
    G = 2 * H
    q = x @ P[f"{at}.query_proj.weight"].T + P[f"{at}.query_proj.bias"]  # (N, H dk)
    qh = q.reshape(N, G, half).transpose(0, 1)  # (G, N, half), g = 2h + half
    keys = P[f"{at}.keys"].reshape(G, n, half)
    s = qh @ keys.transpose(-1, -2)  # (G, N, n)
    idx, srt = topk_desc_index_asc(s, k)
    margins.see("half", srt, k)
    hval = s.gather(-1, idx)  # (G, N, k), carries the gradient
    v1, v2 = hval[0::2], hval[1::2]  # (H, N, k): halves 0 and 1 of each head
    i1, i2 = idx[0::2], idx[1::2]
    cand = (v1[..., :, None] + v2[..., None, :]).reshape(H, N, k * k)  # c = a k + b
    slot = (i1[..., :, None] * n + i2[..., None, :]).reshape(H, N, k * k)
    with torch.no_grad():
        # score desc, slot asc: a stable sort by slot, then a stable sort by score
        by_slot = torch.sort(slot, dim=-1, stable=True).indices
        srt2, o2 = torch.sort(cand.gather(-1, by_slot), dim=-1, descending=True, stable=True)
        pick = by_slot.gather(-1, o2)[..., :k]  # (H, N, k) candidate positions
    margins.see("product", srt2, k)
    sel = cand.gather(-1, pick)
    w = torch.softmax(sel, dim=-1)  # (H, N, k)
    slots = slot.gather(-1, pick)
    rows = table[slots.reshape(-1)].reshape(H, N, k, d)
    y = (w[..., None] * rows).sum(dim=2).sum(dim=0)  # (N, d): heads summed
    if f"{at}.swilu_projection.weight" not in P:
        return y
    z = x @ P[f"{at}.swilu_projection.weight"].T + P[f"{at}.swilu_projection.bias"]
    return (y * F.silu(z)) @ P[f"{at}.value_proj.weight"].T + P[f"{at}.value_proj.bias"]


def forward(P, cfg, ids, targets, margins):
    """logits (B T, V) and the mean cross-entropy"""
    B, T = ids.shape
    d, NH, NKV = cfg["dim"], cfg["heads"], cfg["kvHeads"]
    HS = d // NH
    eps = cfg["normEps"]
    mem = cfg.get("memory")
    mem_layers = set(mem["layers"]) if mem else set()
    any_p = P["model.embed_tokens.weight"]
    cos, sin = rope_tables(T, HS, cfg["ropeTheta"], any_p.dtype, any_p.device)
    h = P["model.embed_tokens.weight"][ids.reshape(-1)]  # (B T, d)
    for i in range(cfg["layers"]):
        at = f"model.layers.{i}"
        n1 = rmsnorm(h, P[f"{at}.input_layernorm.weight"], eps)
        q = (n1 @ P[f"{at}.self_attn.q_proj.weight"].T).reshape(B, T, NH, HS)
        k = (n1 @ P[f"{at}.self_attn.k_proj.weight"].T).reshape(B, T, NKV, HS)
        v = (n1 @ P[f"{at}.self_attn.v_proj.weight"].T).reshape(B, T, NKV, HS)
        att = attention(rope(q, cos, sin), rope(k, cos, sin), v, NH, NKV)
        h = h + att.reshape(B * T, d) @ P[f"{at}.self_attn.o_proj.weight"].T
        n2 = rmsnorm(h, P[f"{at}.post_attention_layernorm.weight"], eps)
        if i in mem_layers:
            f = memory_layer(n2, P, f"{at}.mlp", P[VALUES], mem, margins)
        else:
            g = n2 @ P[f"{at}.mlp.gate_proj.weight"].T
            u = n2 @ P[f"{at}.mlp.up_proj.weight"].T
            f = (F.silu(g) * u) @ P[f"{at}.mlp.down_proj.weight"].T
        h = h + f
    nf = rmsnorm(h, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if cfg.get("tiedEmbeddings") else P["lm_head.weight"]
    logits = nf @ head.T
    loss = F.cross_entropy(logits, targets.reshape(-1), reduction="mean")
    return logits, loss


# ---------------------------------------------------------------- training (engram's AdamW + schedule)

def lr_factor(s, sch):
    warmup, steps, min_ratio = sch["warmup"], sch["steps"], sch["minRatio"]
    if s <= warmup:
        return s / max(1, warmup)
    t = min(1.0, (s - warmup) / max(1, steps - warmup))
    return 1 - t * (1 - min_ratio)


def train(P, cfg, ids, targets, tr, margins, wd=0.1, b1=0.9, b2=0.95, eps=1e-8, max_norm=1.0):
    groups = {"model": [n for n in P if n != VALUES], "values": [n for n in P if n == VALUES]}
    lrs = {"model": tr["lr"], "values": 10 * tr["lr"]}
    m = {n: torch.zeros_like(p) for n, p in P.items()}
    v = {n: torch.zeros_like(p) for n, p in P.items()}
    losses, norms = [], {"model": [], "values": []}
    for s in range(1, tr["steps"] + 1):
        for p in P.values():
            p.grad = None
        _, loss = forward(P, cfg, ids, targets, margins)
        loss.backward()
        losses.append(loss.item())
        factor = lr_factor(s, tr["schedule"])
        bc1, bc2 = 1 - b1 ** s, 1 - b2 ** s
        with torch.no_grad():
            for group, names in groups.items():
                if not names:
                    norms[group].append(0.0)
                    continue
                grads = {n: (P[n].grad if P[n].grad is not None else torch.zeros_like(P[n])) for n in names}
                norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
                norms[group].append(norm)
                scale = min(1.0, max_norm / (norm + 1e-6))
                lr = lrs[group] * factor
                for n in names:
                    g = grads[n] * scale
                    p = P[n]
                    p.mul_(1 - lr * wd)
                    m[n].mul_(b1).add_(g, alpha=1 - b1)
                    v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.sub_(lr * (m[n] / bc1) / ((v[n] / bc2).sqrt() + eps))
        log(f"step {s}: loss {losses[-1]:.8f} lrFactor {factor:.4f} grad norms model {norms['model'][-1]:.6g} values {norms['values'][-1]:.6g}")
    return losses, norms


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        import transformers  # noqa: F401

        log("transformers is importable; the dense part is not compared with LlamaForCausalLM here (memory blocks are not in HF)")
    except ImportError:
        pass

    with open(os.path.join(args.dir, "model", "config.json")) as f:
        hf = json.load(f)
    cfg = hf["engram"]
    with open(os.path.join(args.dir, "batch.json")) as f:
        batch = json.load(f)
    with open(os.path.join(args.dir, "train.json")) as f:
        tr = json.load(f)
    if cfg.get("memory") and not cfg["memory"].get("gated", True):
        log("memory.gated is false: the layer's out is y")
    if cfg.get("memory") and cfg["memory"].get("qkNorm"):
        raise SystemExit("parity.py: memory.qkNorm is not mirrored here")
    W = read_safetensors(os.path.join(args.dir, "model", "model.safetensors"))
    ids = torch.tensor(batch["ids"], dtype=torch.long, device=dev)
    targets = torch.tensor(batch["targets"], dtype=torch.long, device=dev)
    B, T = ids.shape
    log(f"{len(W)} tensors, {sum(t.numel() for t in W.values())} parameters; batch {B}x{T}; {args.device} {args.dtype}")

    def params():
        return {n: t.to(dev, dtype).requires_grad_(True) for n, t in W.items()}

    margins = Margins()
    P = params()
    logits, loss = forward(P, cfg, ids, targets, margins)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for n, p in P.items():
        out[f"grad.{n}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    log(f"loss {loss.item():.10f}")

    losses, norms = train(params(), cfg, ids, targets, tr, margins)
    out["steps_loss"] = torch.tensor(losses, dtype=torch.float64)
    out["steps_grad_norm_model"] = torch.tensor(norms["model"], dtype=torch.float64)
    out["steps_grad_norm_values"] = torch.tensor(norms["values"], dtype=torch.float64)
    path = os.path.join(args.dir, "golden.safetensors")
    write_safetensors(path, out)
    log(f"smallest top-k margin: halves {margins.half:.3g}, product {margins.product:.3g} (f32 GPU selection is safe well above ~1e-5)")
    log(f"wrote {path} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
