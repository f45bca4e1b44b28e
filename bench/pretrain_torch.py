"""PyTorch reference for `bert-native bench pretrain`: Hugging Face BertForPreTraining (eager
attention, float32, CPU) from scratch, the same synthetic batch (tokens, 20 masked positions spread
over the sequence, alternating next-sentence labels), forward + backward + AdamW (apex's FusedLAMB
is CUDA-only; the optimizer is a small share of a step). One JSON line with the same keys.

    python bench/pretrain_torch.py [--config base|large] [--seq 128] [--batch 8] [--max-pred 20]
        [--steps 3] [--warmup 1] [--threads 2]
"""
import argparse
import json
import math
import statistics
import time

import torch
from transformers import BertConfig, BertForPreTraining

p = argparse.ArgumentParser()
p.add_argument("--config", default="base")
p.add_argument("--seq", type=int, default=128)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--max-pred", type=int, default=20)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
shape = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}[a.config]
config = BertConfig(vocab_size=30522, num_hidden_layers=shape[0], hidden_size=shape[1],
                    num_attention_heads=shape[2], intermediate_size=shape[3])
config._attn_implementation = "eager"
model = BertForPreTraining(config).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.01)

ordinary = config.vocab_size - 1000
rows = []
for r in range(a.batch):
    ids = [1000 + (i * 7919 + r * 104729) % ordinary for i in range(a.seq)]
    ids[0], ids[-1] = 101, 102
    rows.append(ids)
input_ids = torch.tensor(rows)
token_type_ids = torch.tensor([[int(i >= a.seq // 2) for i in range(a.seq)]] * a.batch)
labels = torch.full((a.batch, a.seq), -100)
stride = (a.seq - 2) // a.max_pred
k = 0
for r in range(a.batch):
    for j in range(a.max_pred):
        labels[r, 1 + j * stride] = 1000 + k % 500
        k += 1
next_sentence = torch.tensor([r % 2 for r in range(a.batch)])

times = []
for step in range(a.warmup + a.steps):
    start = time.perf_counter()
    out = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=torch.ones_like(input_ids),
                labels=labels, next_sentence_label=next_sentence)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if step >= a.warmup:
        times.append((time.perf_counter() - start) * 1000)
times.sort()
pct = lambda q: times[min(max(math.ceil(q / 100 * len(times)), 1), len(times)) - 1]
mean = statistics.mean(times)
print(json.dumps({"benchmark": "pretrain", "backend": f"pytorch-{torch.__version__}-cpu-{a.threads}threads",
                  "layers": shape[0], "hidden": shape[1], "seq": a.seq, "batch": a.batch, "max_pred": a.max_pred,
                  "steps": a.steps,
                  "step_ms": {"p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "mean": mean},
                  "training_sequences_per_second": a.batch * 1000 / mean}))
