"""Compares the loss trajectory `bert-native pretrain` logged (DLLogger JSON lines) with the
PyTorch reference's (tests/fixtures/pretrain/manifest.json), within a tolerance per precision.
Prints one JSON line; exits 1 when a step is off. Needs only the standard library.

    python bench/gpu/trajectory.py DLLOGGER.json MANIFEST.json PRECISION
"""
import json
import sys

TOLERANCE = {"fp32": 2e-3, "tf32": 2e-3, "bf16": 5e-2, "fp16": 1e-2}
log, manifest, precision = sys.argv[1], sys.argv[2], sys.argv[3]
steps = [json.loads(line[len("DLLL "):]) for line in open(log) if line.startswith("DLLL ")]
steps = [s for s in steps if isinstance(s.get("step"), list) and "loss" in s.get("data", {})]
reference = json.load(open(manifest))["per_step"]
worst = 0.0
for ours, theirs in zip(steps, reference):
    worst = max(worst, abs(ours["data"]["loss"] - theirs["loss"]))
ok = len(steps) == len(reference) and worst <= TOLERANCE[precision]
print(json.dumps({"check": "pretrain-trajectory", "precision": precision, "steps": len(steps),
                  "max_loss_diff_vs_pytorch": worst, "losses": [s["data"]["loss"] for s in steps],
                  "skipped": [s["data"].get("skipped") for s in steps], "pass": ok}))
sys.exit(0 if ok else 1)
