"""Makes tests/fixtures/pretrain from shared/golden/pretrain (the PyTorch reference trajectory),
small enough for the repository: the initial weights, the shard, config, trajectory and manifest
whole; the final weights and optimizer moments whole except the 30522-row word-embedding tensors,
of which only the rows the shard's tokens touch plus 256 others are kept (with their row ids).

    ~/.cache/bert-oracle/venv/bin/python scripts/make_pretrain_fixtures.py ../shared/golden/pretrain tests/fixtures/pretrain
"""
import os
import shutil
import sys

import h5py
import numpy as np
from safetensors.numpy import load_file, save_file

src, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "data"), exist_ok=True)
for name in ["config.json", "init.safetensors", "trajectory.json", "manifest.json",
             "data/tiny_pretrain_seq128_training_0.hdf5"]:
    shutil.copyfile(os.path.join(src, name), os.path.join(out, name))

with h5py.File(os.path.join(src, "data/tiny_pretrain_seq128_training_0.hdf5")) as f:
    ids = set(np.asarray(f["input_ids"]).ravel().tolist()) | set(np.asarray(f["masked_lm_ids"]).ravel().tolist())
rng = np.random.default_rng(0)
others = [i for i in rng.permutation(30522).tolist() if i not in ids][:256]
rows = np.array(sorted(ids | set(others)), dtype=np.int64)

EMB = "bert.embeddings.word_embeddings.weight"
for name, prefix in [("final.safetensors", ""), ("optimizer_state.safetensors", None)]:
    tensors = load_file(os.path.join(src, name))
    subset = {}
    for key, value in tensors.items():
        if key.endswith(EMB):
            subset[key] = np.ascontiguousarray(value[rows])
        else:
            subset[key] = value
    subset["word_embedding_rows"] = rows
    save_file(subset, os.path.join(out, name.replace(".safetensors", "_subset.safetensors")))
print("rows kept:", len(rows))
