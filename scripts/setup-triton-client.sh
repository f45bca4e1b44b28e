#!/usr/bin/env bash
# A small Python environment with the clients the serving interoperability tests drive
# (native/tests/serve.rs): NVIDIA's own Triton HTTP client (PyPI tritonclient[http]) and OpenAI's
# `openai` package (its embeddings client against /v1/embeddings). Idempotent.
#
#   scripts/setup-triton-client.sh [DEST]     (default: $BERT_RS_TRITON_VENV or ~/.cache/bert-rs/triton-venv)
set -euo pipefail
DEST=${1:-${BERT_RS_TRITON_VENV:-$HOME/.cache/bert-rs/triton-venv}}
PACKAGES=("tritonclient[http]==2.73.0" "numpy<3" "openai==3.63.0")

if [ -x "$DEST/bin/python" ] && "$DEST/bin/python" -c "import tritonclient.http, numpy, openai" 2>/dev/null; then
  echo "triton client present: $DEST"
  exit 0
fi
rm -rf "$DEST"
python3 -m venv "$DEST"
"$DEST/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
echo "triton client installed: $DEST"
