"""PyTorch reference for `bert-native bench forward` and `bench squad-inference`: the same model
folder (plus extra weights), or a preset with random weights (`--config base|large`, a
BertForQuestionAnswering), the same synthetic batch and timing loop, one JSON line with the same keys.

    python bench/forward_torch.py MODEL_DIR [--extra-weights F] [--batch-size 1] [--seq-len 384]
        [--iterations 10] [--warmup 2] [--threads 2]
    python bench/forward_torch.py --config large --batch-size 8 --seq-len 384

Needs torch, transformers, safetensors (the oracle environment of shared/oracle/setup_oracle_env.sh).
"""
import argparse
import json
import math
import os
import statistics
import time

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForQuestionAnswering, BertModel

p = argparse.ArgumentParser()
p.add_argument("model", nargs="?")
p.add_argument("--config", choices=["base", "large"])
p.add_argument("--extra-weights", action="append", default=[])
p.add_argument("--batch-size", type=int, default=1)
p.add_argument("--seq-len", type=int, default=384)
p.add_argument("--iterations", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)

if a.config:
    shape = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}[a.config]
    config = BertConfig(vocab_size=30522, num_hidden_layers=shape[0], hidden_size=shape[1],
                        num_attention_heads=shape[2], intermediate_size=shape[3])
    config._attn_implementation = "eager"
    model = BertForQuestionAnswering(config)
else:
    config = BertConfig.from_pretrained(a.model)
    config._attn_implementation = "eager"
    state = load_file(os.path.join(a.model, "model.safetensors"))
    for extra in a.extra_weights:
        state.update(load_file(extra))
    state = {k if k.startswith(("bert.", "cls.", "qa_outputs.", "classifier.")) else "bert." + k: v
             for k, v in state.items()}
    model = BertForQuestionAnswering(config) if "qa_outputs.weight" in state else BertModel(config)
    if isinstance(model, BertModel):
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    model.load_state_dict(state, strict=False)
model.eval()

ordinary = max(config.vocab_size - 1000, 1)
rows = []
for r in range(a.batch_size):
    ids = [1000 + (i * 7919 + r * 104729) % ordinary for i in range(a.seq_len)]
    ids[0], ids[-1] = 101, 102
    rows.append(ids)
feed = {"input_ids": torch.tensor(rows), "token_type_ids": torch.zeros(a.batch_size, a.seq_len, dtype=torch.long),
        "attention_mask": torch.ones(a.batch_size, a.seq_len, dtype=torch.long)}

times = []
with torch.inference_mode():
    for i in range(a.warmup + a.iterations):
        start = time.perf_counter()
        model(**feed)
        if i >= a.warmup:
            times.append((time.perf_counter() - start) * 1000)
times.sort()
pct = lambda q: times[min(max(math.ceil(q / 100 * len(times)), 1), len(times)) - 1]
mean = statistics.mean(times)
print(json.dumps({"benchmark": "squad-inference" if a.config else "forward", "backend": f"pytorch-{torch.__version__}-cpu-{a.threads}threads",
                  "batch_size": a.batch_size, "seq_len": a.seq_len, "iterations": a.iterations,
                  "latency_ms": {"p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "mean": mean},
                  "inference_sequences_per_second": a.batch_size * 1000 / mean}))
