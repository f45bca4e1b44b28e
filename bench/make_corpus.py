"""Writes a deterministic English corpus of about SIZE_MB megabytes for the `prep` benchmark:
documents of 5 to 60 sentences sampled from real English text (the licenses in
tests/fixtures/corpus/licenses), one sentence per line, a blank line between documents.

    python3 bench/make_corpus.py OUT.txt [SIZE_MB]
"""
import os
import random
import re
import sys

out, size_mb = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 50
here = os.path.dirname(os.path.abspath(__file__))
source = os.path.join(here, "..", "tests", "fixtures", "corpus", "licenses")
sentences = []
for name in sorted(os.listdir(source)):
    text = " ".join(open(os.path.join(source, name), encoding="utf-8").read().split())
    sentences += [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if 20 < len(s) < 400]
rng = random.Random(12345)
target = int(size_mb * 1e6)
written = 0
with open(out + ".tmp", "w", encoding="utf-8") as f:
    while written < target:
        doc = " ".join(rng.choice(sentences) for _ in range(rng.randint(5, 60))) + "\n\n"
        f.write(doc)
        written += len(doc.encode())
os.replace(out + ".tmp", out)
print(f"{out}: {written / 1e6:.1f} MB from {len(sentences)} distinct sentences")
