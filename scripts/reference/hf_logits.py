"""Logits of a HF export in transformers against llmos's, on the same token ids.

usage: hf_logits.py HF_DIR LLMOS_LOGITS.json   (from `llmos eval logits --json`-style output)
Prints one JSON object: max absolute difference, and whether the argmax agrees everywhere.
"""
import json, sys

import torch
from transformers import AutoModelForCausalLM

hf_dir, ours = sys.argv[1], json.load(open(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
model.eval()
with torch.no_grad():
    out = model(torch.tensor([ours["ids"]])).logits[0]
mine = torch.tensor(ours["logits"])
diff = (out - mine).abs().max().item()
print(json.dumps({"positions": len(ours["ids"]), "vocab": mine.shape[1], "max_abs_diff": diff,
                  "argmax_equal": bool((out.argmax(-1) == mine.argmax(-1)).all())}))
