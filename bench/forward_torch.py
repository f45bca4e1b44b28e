"""PyTorch and ONNX Runtime references for `bert-native bench forward` and `bench squad-inference`:
the same model folder (plus extra weights), or a preset with random weights (`--config base|large`,
a BertForQuestionAnswering), the same synthetic batch and timing loop, one JSON line with the same
keys.

    python bench/forward_torch.py MODEL_DIR [--extra-weights F] [--batch-size 1] [--seq-len 384]
        [--iterations 10] [--warmup 2] [--threads 2] [--engine eager|sdpa|ort]
    python bench/forward_torch.py --config large --batch-size 8 --seq-len 384

`--engine`: PyTorch with its eager attention (default) or its fused `sdpa` attention, or ONNX
Runtime's CPU provider running the same model exported to ONNX (as shared/bench/tjs-anchor does;
the export is cached under ~/.cache/bert-rs/onnx and checked against PyTorch's outputs).

Needs torch, transformers, safetensors (the oracle environment of shared/oracle/setup_oracle_env.sh),
plus onnx, onnxscript and onnxruntime for `--engine ort`.
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
p.add_argument("--engine", choices=["eager", "sdpa", "ort"], default="eager")
a = p.parse_args()
attention = "sdpa" if a.engine == "sdpa" else "eager"
torch.set_num_threads(a.threads)
torch.manual_seed(0)  # the presets' random weights, the same in every run (and in the ONNX export)

if a.config:
    shape = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}[a.config]
    config = BertConfig(vocab_size=30522, num_hidden_layers=shape[0], hidden_size=shape[1],
                        num_attention_heads=shape[2], intermediate_size=shape[3])
    config._attn_implementation = attention
    model = BertForQuestionAnswering(config)
else:
    config = BertConfig.from_pretrained(a.model)
    config._attn_implementation = attention
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



def onnx_session():
    """ONNX Runtime on the model exported once (cached by what defines it), checked against torch."""
    import hashlib

    import numpy as np
    import onnxruntime as ort

    key = hashlib.sha256(json.dumps([a.model and os.path.abspath(a.model), a.config, a.extra_weights,
                                     type(model).__name__]).encode()).hexdigest()[:16]
    path = os.path.expanduser(f"~/.cache/bert-rs/onnx/{key}/model.onnx")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
        partial = path + ".partial"
        torch.onnx.export(model, tuple(feed[n] for n in names), partial, input_names=names,
                          dynamic_axes=dynamic, opset_version=17, do_constant_folding=True, dynamo=False)
        os.replace(partial, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {n: feed[n].numpy() for n in names}
    ours = session.run(None, inputs)[0]
    with torch.inference_mode():
        out = model(**feed)
    expected = (out.start_logits if hasattr(out, "start_logits") else out.last_hidden_state).numpy()
    assert np.abs(ours - expected).max() < 1e-3, "the ONNX export disagrees with PyTorch"
    return lambda: session.run(None, inputs)


if a.engine == "ort":
    run = onnx_session()
    version = f"onnxruntime-{__import__('onnxruntime').__version__}"
else:
    def run():
        with torch.inference_mode():
            model(**feed)
    version = f"pytorch-{torch.__version__}-{attention}"

times = []
for i in range(a.warmup + a.iterations):
    start = time.perf_counter()
    run()
    if i >= a.warmup:
        times.append((time.perf_counter() - start) * 1000)
times.sort()
pct = lambda q: times[min(max(math.ceil(q / 100 * len(times)), 1), len(times)) - 1]
mean = statistics.mean(times)
print(json.dumps({"benchmark": "squad-inference" if a.config else "forward", "backend": f"{version}-cpu-{a.threads}threads",
                  "batch_size": a.batch_size, "seq_len": a.seq_len, "iterations": a.iterations,
                  "latency_ms": {"p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "mean": mean},
                  "inference_sequences_per_second": a.batch_size * 1000 / mean}))
