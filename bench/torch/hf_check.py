"""Loads a dense engram checkpoint in transformers' LlamaForCausalLM and compares its logits.

    python3 bench/torch/hf_check.py <dir> [out.json]

<dir> comes from scripts/hf_check_make.ts: <dir>/model (config.json + model.safetensors) and
<dir>/engram_logits.json. Prints and writes (when out.json is given) a result file with the
max absolute and the norm-wise relative difference between the two models' logits (float32,
TF32 off).
"""
import json
import sys
from datetime import datetime, timezone

import torch
import transformers
from transformers import LlamaForCausalLM


def main():
    d = sys.argv[1]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = LlamaForCausalLM.from_pretrained(f'{d}/model', torch_dtype=torch.float32).to(dev).eval()
    ref = json.load(open(f'{d}/engram_logits.json'))
    ids = torch.tensor(ref['ids'], dtype=torch.long, device=dev)
    with torch.no_grad():
        logits = model(ids).logits.float().reshape(-1, model.config.vocab_size).cpu()
    ours = torch.tensor(ref['logits'], dtype=torch.float32).reshape(logits.shape)
    diff = (logits - ours).abs()
    rel = ((logits - ours).norm() / logits.norm()).item()
    res = {
        'hf_logits_max_abs_diff': diff.max().item(),
        'hf_logits_rel_err': rel,
        'hf_logits_max_abs': logits.abs().max().item(),
    }
    print(f'transformers {transformers.__version__} on {dev}: {res}')
    if len(sys.argv) > 2:
        name = torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'
        json.dump({
            'suite': 'hf_parity',
            'device': name,
            'date': datetime.now(timezone.utc).isoformat(),
            'commit': sys.argv[3] if len(sys.argv) > 3 else 'unknown',
            'command': 'node --import tsx scripts/hf_check_make.ts <dir> && python3 bench/torch/hf_check.py <dir> <out>',
            'results': res,
            'notes': {'transformers': transformers.__version__, 'torch': torch.__version__},
        }, open(sys.argv[2], 'w'), indent=2)


if __name__ == '__main__':
    main()
