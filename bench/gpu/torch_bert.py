"""PyTorch reference timings for scripts/gpu-check.sh, on the same GPU as bert-native.

The model is NVIDIA's `modeling.py` BERT in plain PyTorch (post-LN encoder, exact GELU, tanh
pooler, the MLM decoder tied to the word embeddings and run on the masked positions only, as
`run_pretraining.py` does), with `torch.nn.functional.scaled_dot_product_attention` (what
Hugging Face's BERT uses by default). Mixed precision is `torch.autocast` (the reference's
`--amp`), float16 with a `GradScaler` starting at 2**20; tf32 sets `allow_tf32`. The optimizer is
fused AdamW after `clip_grad_norm_` (apex FusedLAMB is not installed there: both are one fused
multi-tensor pass). Needs only torch. One JSON line per run, keys as `bert-native bench`.

    python bench/gpu/torch_bert.py pretrain --config large --seq 128 --batch 64 --precision fp32,fp16
    python bench/gpu/torch_bert.py squad-inference --config large --seq 384 --batch 8 --precision bf16

`--precision` takes a comma-separated list: one process, one line per precision.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
VOCAB, POSITIONS = 30522, 512


class Layer(nn.Module):
    def __init__(self, hidden, heads, intermediate):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, h, bias):
        b, s, d = h.shape
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=0.1 if self.training else 0.0)
        context = context.transpose(1, 2).reshape(b, s, d)
        h = self.attention_norm(h + self.dropout(self.attention_output(context)))
        return self.output_norm(h + self.dropout(self.output(F.gelu(self.intermediate(h)))))


class Bert(nn.Module):
    def __init__(self, config):
        super().__init__()
        layers, hidden, heads, intermediate = SHAPES[config]
        self.word = nn.Embedding(VOCAB, hidden)
        self.position = nn.Embedding(POSITIONS, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.ModuleList(Layer(hidden, heads, intermediate) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.transform = nn.Linear(hidden, hidden)
        self.transform_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.mlm_bias = nn.Parameter(torch.zeros(VOCAB))
        self.nsp = nn.Linear(hidden, 2)
        self.qa = nn.Linear(hidden, 2)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def encode(self, ids, types, mask):
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.dropout(self.embedding_norm(self.word(ids) + self.position(positions) + self.token_type(types)))
        bias = ((1.0 - mask[:, None, None, :].to(h.dtype)) * -10000.0)
        for layer in self.layers:
            h = layer(h, bias)
        return h

    def pretraining_loss(self, ids, types, mask, masked_index, masked_labels, nsp_labels):
        h = self.encode(ids, types, mask)
        masked = h.flatten(0, 1).index_select(0, masked_index)
        transformed = self.transform_norm(F.gelu(self.transform(masked)))
        mlm_logits = transformed @ self.word.weight.t() + self.mlm_bias
        nsp_logits = self.nsp(torch.tanh(self.pooler(h[:, 0])))
        return F.cross_entropy(mlm_logits.float(), masked_labels) + F.cross_entropy(nsp_logits.float(), nsp_labels)

    def span_logits(self, ids, types, mask):
        return self.qa(self.encode(ids, types, mask)).unbind(-1)


def synthetic(batch, seq, device):
    ordinary = VOCAB - 1000
    rows = []
    for r in range(batch):
        ids = [1000 + (i * 7919 + r * 104729) % ordinary for i in range(seq)]
        ids[0], ids[-1] = 101, 102
        rows.append(ids)
    ids = torch.tensor(rows, device=device)
    types = torch.tensor([[int(i >= seq // 2) for i in range(seq)]] * batch, device=device)
    return ids, types, torch.ones_like(ids)


def summary(times, sequences):
    times.sort()
    pct = lambda q: times[min(max(math.ceil(q / 100 * len(times)), 1), len(times)) - 1]
    mean = statistics.mean(times)
    return {"p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "mean": mean}, sequences * 1000 / mean


def main():
    p = argparse.ArgumentParser()
    p.add_argument("benchmark", choices=["pretrain", "squad-inference"])
    p.add_argument("--config", default="large", choices=sorted(SHAPES))
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-pred", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="fp32", help="fp32, tf32, fp16, bf16 or a comma-separated list")
    p.add_argument("--device", default="cuda", help="cpu only to try the script without a GPU")
    a = p.parse_args()
    for precision in a.precision.split(","):
        if precision not in ("fp32", "tf32", "fp16", "bf16"):
            p.error(f"unknown precision {precision}")
        a.precision = precision
        run(a)


def run(a):
    device = torch.device(a.device)
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
    autocast = lambda: torch.autocast(device.type, dtype=half, enabled=half is not None)
    torch.manual_seed(42)
    model = Bert(a.config).to(device)
    ids, types, mask = synthetic(a.batch, a.seq, device)
    times, first = [], None
    record = {"backend": f"pytorch-{torch.__version__}-" + (torch.cuda.get_device_name() if on_gpu else "cpu"), "precision": a.precision,
              "config": a.config}
    if a.benchmark == "pretrain":
        model.train()
        stride = (a.seq - 2) // a.max_pred
        masked_index = torch.tensor([r * a.seq + 1 + j * stride for r in range(a.batch) for j in range(a.max_pred)],
                                    device=device)
        masked_labels = torch.tensor([1000 + i % 500 for i in range(a.batch * a.max_pred)], device=device)
        nsp_labels = torch.tensor([r % 2 for r in range(a.batch)], device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.01, fused=on_gpu)
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 20, enabled=a.precision == "fp16")
        skipped = 0
        for step in range(a.warmup + a.steps):
            sync()
            start = time.perf_counter()
            with autocast():
                loss = model.pretraining_loss(ids, types, mask, masked_index, masked_labels, nsp_labels)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped += int(scaler.get_scale() < scale)
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            elapsed = (time.perf_counter() - start) * 1000
            first = elapsed if step == 0 else first
            if step >= a.warmup:
                times.append(elapsed)
        latency, throughput = summary(times, a.batch)
        record.update({"benchmark": "pretrain", "seq": a.seq, "batch": a.batch, "max_pred": a.max_pred,
                       "steps": a.steps, "step_ms": latency, "first_step_ms": first,
                       "training_sequences_per_second": throughput,
                       "skipped_steps": skipped,
                       "max_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if on_gpu else None})
    else:
        model.eval()
        with torch.inference_mode(), autocast():
            for i in range(a.warmup + a.steps):
                sync()
                start = time.perf_counter()
                start_logits, end_logits = model.span_logits(ids, torch.zeros_like(types), mask)
                start_logits.float().cpu(), end_logits.float().cpu()
                elapsed = (time.perf_counter() - start) * 1000
                first = elapsed if i == 0 else first
                if i >= a.warmup:
                    times.append(elapsed)
        latency, throughput = summary(times, a.batch)
        record.update({"benchmark": "squad-inference", "batch_size": a.batch, "seq_len": a.seq,
                       "iterations": a.steps, "latency_ms": latency, "first_iteration_ms": first,
                       "inference_sequences_per_second": throughput})
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
