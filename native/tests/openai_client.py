"""Queries a bert-native server's /v1/embeddings with OpenAI's own client library (the `openai`
package), as an application written for OpenAI's API would, and prints what it got as one JSON
object.

    python openai_client.py HOST:PORT MODEL OTHER_MODEL '["a text", ...]'

OTHER_MODEL is a model of the server that does not embed (its error is reported).
"""
import json
import sys

import openai

url, model, other_model, texts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="not-needed", max_retries=0)
# The client asks for base64 unless told otherwise, and decodes it.
default = client.embeddings.create(model=model, input=texts)
floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
single = client.embeddings.create(model=model, input=texts[0])
report = {
    "default": [item.embedding for item in default.data],
    "indices": [item.index for item in default.data],
    "float": [item.embedding for item in floats.data],
    "single": single.data[0].embedding,
    "model": default.model,
    "usage": {"prompt_tokens": default.usage.prompt_tokens,
              "total_tokens": default.usage.total_tokens},
    "errors": {},
}
for name, call in [
    ("not_embedding", lambda: client.embeddings.create(model=other_model, input="x")),
    ("unknown_model", lambda: client.embeddings.create(model="no-such-model", input="x")),
    ("empty_input", lambda: client.embeddings.create(model=model, input=[])),
]:
    try:
        call()
        report["errors"][name] = "no error"
    except openai.APIStatusError as error:
        report["errors"][name] = {"class": type(error).__name__, "status": error.status_code,
                                  "message": error.message}
print(json.dumps(report))
