"""Makes tests/fixtures/checkpoints: one tiny seeded BERT saved in every format we load, plus what
Hugging Face transformers computes with it (float32, eval mode).

Run with the oracle environment (../shared/oracle/setup_oracle_env.sh):
    ~/.cache/bert-oracle/venv/bin/python scripts/make_checkpoint_fixtures.py tests/fixtures/checkpoints

Files:
  config.json              Hugging Face config (vocab 30)
  bert_config.json         NVIDIA config (same model, no layer_norm_eps)
  model.safetensors        BertForPreTraining + qa_outputs, Hugging Face names (transformers' own writer)
  pytorch_model.bin        the same state dict, legacy (pre-1.6, non-zip) torch.save, old
                           `LayerNorm.gamma/beta` names, bare BertModel names (no `bert.`)
  nvidia_ckpt.pt           NVIDIA run_pretraining.py layout: {'model': state_dict, 'optimizer': ...},
                           `module.` prefixes, `dense_act`, vocabulary padded to 32 rows
  expected.safetensors     inputs and transformers' outputs: last_hidden_state, pooler_output,
                           mlm_logits, nsp_logits, start_logits, end_logits
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForPreTraining, BertForQuestionAnswering

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(20261126)
config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=24, type_vocab_size=2,
                    layer_norm_eps=1e-12, hidden_act="gelu")
pretraining = BertForPreTraining(config).eval()
qa = BertForQuestionAnswering(config).eval()
# Non-trivial biases and LayerNorm parameters, so a transposed or swapped tensor cannot pass.
with torch.no_grad():
    for model in (pretraining, qa):
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    qa.bert.load_state_dict(pretraining.bert.state_dict(), strict=False)

state = {k: v.clone() for k, v in pretraining.state_dict().items()}
state["qa_outputs.weight"] = qa.qa_outputs.weight.detach().clone()
state["qa_outputs.bias"] = qa.qa_outputs.bias.detach().clone()

config.architectures = ["BertForPreTraining"]
config.to_json_file(os.path.join(out, "config.json"))
nvidia_config = {k: getattr(config, k) for k in [
    "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
    "initializer_range", "intermediate_size", "max_position_embeddings", "num_attention_heads",
    "num_hidden_layers", "type_vocab_size", "vocab_size"]}
with open(os.path.join(out, "bert_config.json"), "w") as f:
    json.dump(nvidia_config, f, indent=2)

hf = {k: v.contiguous() for k, v in state.items() if k != "cls.predictions.decoder.weight"}
save_file(hf, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

legacy = {}
for k, v in state.items():
    k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    legacy[k[len("bert."):] if k.startswith("bert.") else k] = v
torch.save(legacy, os.path.join(out, "pytorch_model.bin"), _use_new_zipfile_serialization=False)

nvidia = {}
for k, v in state.items():
    k = (k.replace("intermediate.dense.", "intermediate.dense_act.")
          .replace("pooler.dense.", "pooler.dense_act.")
          .replace("transform.dense.", "transform.dense_act."))
    if k in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"):
        v = torch.cat([v, torch.randn(2, v.shape[1])])
    if k in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        v = torch.cat([v, torch.zeros(2)])
    nvidia["module." + k] = v
optimizer = {"state": {i: {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3), "step": 7} for i in range(3)},
             "param_groups": [{"lr": 6e-3, "params": [0, 1, 2]}]}
torch.save({"model": nvidia, "optimizer": optimizer, "files": ["a.hdf5"], "epoch": 0},
           os.path.join(out, "nvidia_ckpt.pt"))

input_ids = torch.tensor([[2, 5, 7, 9, 11, 3, 13, 17, 3], [2, 6, 8, 3, 29, 3, 0, 0, 0]])
token_type_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0, 0]])
attention_mask = torch.tensor([[1] * 9, [1, 1, 1, 1, 1, 1, 0, 0, 0]])
with torch.no_grad():
    out_pt = pretraining(input_ids=input_ids, token_type_ids=token_type_ids,
                         attention_mask=attention_mask, output_hidden_states=True)
    out_qa = qa(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    pooled = pretraining.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                              attention_mask=attention_mask).pooler_output
save_file({
    "input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
    "last_hidden_state": out_pt.hidden_states[-1].contiguous(),
    "pooler_output": pooled.contiguous(),
    "mlm_logits": out_pt.prediction_logits.contiguous(),
    "nsp_logits": out_pt.seq_relationship_logits.contiguous(),
    "start_logits": out_qa.start_logits.contiguous(),
    "end_logits": out_qa.end_logits.contiguous(),
}, os.path.join(out, "expected.safetensors"))
print("wrote", sorted(os.listdir(out)))
