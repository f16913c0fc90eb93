"""Float reference: Hugging Face transformers runs the GGUF with its weights dequantized to
float32 (the `gguf` package does the dequantizing). Writes ids, top-10 logits, greedy ids and
(optionally) the full last-position logits as little-endian float32.

usage: hf_float.py MODEL.gguf OUT.json --prompt TEXT [--chat] [--logits OUT.f32] [-n 32]
"""
import argparse, json, os, sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("out")
ap.add_argument("--prompt", required=True)
ap.add_argument("--chat", action="store_true", help="render the prompt as one user message with the model's template")
ap.add_argument("--logits", help="write all last-position logits here (float32 LE)")
ap.add_argument("-n", type=int, default=32)
a = ap.parse_args()

torch.manual_seed(0)
d, f = os.path.split(os.path.abspath(a.gguf))
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()

out = {"model": f, "prompt": a.prompt, "transformers_version": transformers.__version__, "torch_version": torch.__version__}
if a.chat:
    msgs = [{"role": "user", "content": a.prompt}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out["templated"] = text
else:
    ids = tok(a.prompt)["input_ids"]
out["prompt_ids"] = ids

# pure argmax loop with the cache, EOS not stopped
greedy, margins = [], []
with torch.no_grad():
    res = model(torch.tensor([ids]), use_cache=True)
    logits = res.logits[0, -1].float()
    last = logits.numpy().copy()
    past = res.past_key_values
    for _ in range(a.n):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        greedy.append(nxt)
        margins.append(float(top2.values[0] - top2.values[1]))
        res = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = res.past_key_values
        logits = res.logits[0, -1].float()

order = np.argsort(-last, kind="stable")[:10]
out["top10"] = [[int(i), float(last[i])] for i in order]
out["greedy_ids"] = greedy
out["greedy_margins"] = margins
out["greedy_text"] = tok.decode(greedy)
if a.logits:
    last.astype("<f4").tofile(a.logits)
    out["logits_file"] = os.path.basename(a.logits)
with open(a.out, "w") as fh:
    json.dump(out, fh, indent=1, ensure_ascii=False)
    fh.write("\n")
print(f"{a.out}: prompt {len(ids)} ids, greedy {greedy[:8]}...", file=sys.stderr)
