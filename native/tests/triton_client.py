"""Queries a bert-native server with NVIDIA's own client library (tritonclient.http), as an
existing Triton user would, and prints what it got as one JSON object.

    python triton_client.py HOST:PORT MODEL '[[101, 7592, 102]]'
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, model, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = httpclient.InferenceServerClient(url=url)
input_ids = np.array(rows, dtype=np.int64)
report = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "metadata": client.get_model_metadata(model),
}
outputs = [o["name"] for o in report["metadata"]["outputs"]]
for binary in (True, False):
    inputs = [
        httpclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
        httpclient.InferInput("attention_mask", list(input_ids.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(input_ids, binary_data=binary)
    inputs[1].set_data_from_numpy(np.ones_like(input_ids), binary_data=binary)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    result = client.infer(model, inputs, outputs=requested, request_id="interop")
    key = "binary" if binary else "json"
    report[key] = {name: result.as_numpy(name).astype(float).tolist() for name in outputs}
    report[key + "_id"] = result.get_response()["id"]
# No outputs named: the client asks for every output as binary data.
result = client.infer(model, [inputs[0]])
report["default"] = {name: result.as_numpy(name).astype(float).tolist() for name in outputs}
print(json.dumps(report))
