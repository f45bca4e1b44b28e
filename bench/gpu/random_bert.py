"""Writes a randomly initialised BERT (NVIDIA's initialisation: N(0, 0.02) weights, zero biases,
LayerNorm 1/0) with pretraining and span heads, under Hugging Face names, as `pytorch_model.bin`
plus `config.json`: a real-size model for scripts/gpu-check.sh's CUDA-vs-CPU forward check on a
machine without the test checkpoint. Needs only torch.

    python bench/gpu/random_bert.py OUT_DIR [--config base|large]
"""
import argparse
import json
import os

import torch

SHAPES = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--config", default="base", choices=sorted(SHAPES))
a = p.parse_args()
layers, hidden, heads, intermediate = SHAPES[a.config]
config = {"architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": 30522,
          "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
          "intermediate_size": intermediate, "hidden_act": "gelu", "max_position_embeddings": 512,
          "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12}
generator = torch.Generator().manual_seed(1234)
state = {}


def dense(name, rows, columns):
    state[f"{name}.weight"] = torch.randn(rows, columns, generator=generator) * 0.02
    state[f"{name}.bias"] = torch.zeros(rows)


def layer_norm(name):
    state[f"{name}.weight"] = torch.ones(hidden)
    state[f"{name}.bias"] = torch.zeros(hidden)


for name, rows in [("word", 30522), ("position", 512), ("token_type", 2)]:
    state[f"bert.embeddings.{name}_embeddings.weight"] = torch.randn(rows, hidden, generator=generator) * 0.02
layer_norm("bert.embeddings.LayerNorm")
for i in range(layers):
    prefix = f"bert.encoder.layer.{i}"
    for part in ("query", "key", "value"):
        dense(f"{prefix}.attention.self.{part}", hidden, hidden)
    dense(f"{prefix}.attention.output.dense", hidden, hidden)
    layer_norm(f"{prefix}.attention.output.LayerNorm")
    dense(f"{prefix}.intermediate.dense", intermediate, hidden)
    dense(f"{prefix}.output.dense", hidden, intermediate)
    layer_norm(f"{prefix}.output.LayerNorm")
dense("bert.pooler.dense", hidden, hidden)
dense("cls.predictions.transform.dense", hidden, hidden)
layer_norm("cls.predictions.transform.LayerNorm")
state["cls.predictions.bias"] = torch.zeros(30522)
dense("cls.seq_relationship", 2, hidden)
dense("qa_outputs", 2, hidden)
os.makedirs(a.out, exist_ok=True)
torch.save(state, os.path.join(a.out, "pytorch_model.bin"))
json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=1)
