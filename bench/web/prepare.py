"""Prepares the browser bench (run by bench/web/run.sh with the oracle's Python):

- the question-answering model both sides run: the MiniLM-L6 encoder plus the seeded QA head of
  the golden forward cases, as a model folder for bert-web (OUT/bert-rs-model);
- a question and a context that fill one 384-token window exactly as transformers' tokenizer
  counts it (OUT/case.json), so bert-web runs one 384-token forward like the transformers.js
  anchor.

Usage: prepare.py MINILM_DIR HEADS_SAFETENSORS ANCHOR_INPUT_JSON OUT
"""
import json
import os
import shutil
import sys

from safetensors.torch import load_file, save_file
from transformers import BertTokenizerFast

minilm, heads, anchor_input, out = sys.argv[1:5]
model_dir = os.path.join(out, "bert-rs-model")
os.makedirs(model_dir, exist_ok=True)
tensors = load_file(os.path.join(minilm, "model.safetensors"))
tensors = {(k if k.startswith("bert.") else "bert." + k): v.contiguous() for k, v in tensors.items()}
head = load_file(heads)
tensors["qa_outputs.weight"] = head["qa_outputs.weight"].contiguous()
tensors["qa_outputs.bias"] = head["qa_outputs.bias"].contiguous()
save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
for name in ["config.json", "tokenizer.json", "vocab.txt"]:
    shutil.copy(os.path.join(minilm, name), model_dir)

case = json.load(open(anchor_input))
tokenizer = BertTokenizerFast.from_pretrained(minilm)
words = case["context"].split()
best = 0
for n in range(1, len(words) + 1):
    length = len(tokenizer(case["question"], " ".join(words[:n]))["input_ids"])
    if length > 384:
        break
    best = n
context = " ".join(words[:best])
length = len(tokenizer(case["question"], context)["input_ids"])
json.dump({"question": case["question"], "context": context, "tokens": length}, open(os.path.join(out, "case.json"), "w"))
print(f"case: {length} tokens in one window; model folder {model_dir}")
