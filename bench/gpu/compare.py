"""Correctness half of scripts/gpu-check.sh: compares `bert-native encode` outputs for one golden
case's inputs on CUDA (at a precision) with the CPU backend's float32 outputs of the same weights.
Needs only torch. Prints one JSON line; exits 1 when a bound fails.

    python bench/gpu/compare.py write-input CASE.safetensors INPUT.json
    python bench/gpu/compare.py compare CASE.safetensors CPU.safetensors GPU.safetensors PRECISION
"""
import json
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16}
# Bound on the CUDA result against the CPU's: the worst real token's cosine similarity of the last
# hidden state (TF32 products carry a 10-bit mantissa, as fp16 does; bf16 has 7 bits). The span
# logits' largest difference and the MLM arg-max agreement are reported (random weights give
# near-tied MLM logits, so agreement is informative only).
MIN_COSINE = {"fp32": 0.9995, "tf32": 0.9995, "bf16": 0.995, "fp16": 0.999}


def load(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(body[start:end]), dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def main():
    if sys.argv[1] == "write-input":
        case = load(sys.argv[2])
        json.dump({k: case[k].tolist() for k in ("input_ids", "token_type_ids", "attention_mask")},
                  open(sys.argv[3], "w"))
        return
    case, cpu, gpu, precision = load(sys.argv[2]), load(sys.argv[3]), load(sys.argv[4]), sys.argv[5]
    mask = case["attention_mask"].bool()
    hidden_cpu, hidden_gpu = cpu["last_hidden_state"][mask], gpu["last_hidden_state"][mask]
    cosine = torch.nn.functional.cosine_similarity(hidden_cpu, hidden_gpu, dim=-1).min().item()
    max_abs = (hidden_cpu - hidden_gpu).abs().max().item()
    span = max((cpu[k] - gpu[k]).abs().max().item() for k in ("start_logits", "end_logits"))
    positions = case["mlm_positions"]
    flat = positions[:, 0] * cpu["mlm_logits"].shape[1] + positions[:, 1]
    mlm_cpu = cpu["mlm_logits"].flatten(0, 1)[flat].argmax(-1)
    mlm_gpu = gpu["mlm_logits"].flatten(0, 1)[flat].argmax(-1)
    agreement = (mlm_cpu == mlm_gpu).float().mean().item()
    ok = cosine >= MIN_COSINE[precision]
    print(json.dumps({"precision": precision, "tokens": int(mask.sum()), "min_token_cosine": cosine,
                      "hidden_max_abs_vs_cpu": max_abs,
                      "span_logits_max_abs_vs_cpu": span, "mlm_argmax_agreement": agreement,
                      "pass": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
