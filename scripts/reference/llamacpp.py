"""llama.cpp reference via llama-cpp-python: greedy ids (argmax over the float logits llama.cpp
returns; it multiplies quantized weights with 8-bit-quantized activations).

usage: llamacpp.py MODEL.gguf OUT.json --prompt TEXT [-n 32] [--threads 2]
"""
import argparse, json, sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("out")
ap.add_argument("--prompt", required=True)
ap.add_argument("-n", type=int, default=32)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

llm = Llama(model_path=a.gguf, n_ctx=2048, n_threads=a.threads, n_threads_batch=a.threads, seed=42, verbose=False)
ids = llm.tokenize(a.prompt.encode(), add_bos=llm._model.add_bos_token(), special=True)
llm.reset()
llm.eval(ids)
greedy, steps = [], []
for _ in range(a.n):
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()
    nxt = int(np.argmax(logits))
    greedy.append(nxt)
    top = np.argsort(-logits, kind="stable")[:5]
    steps.append([[int(i), float(logits[i])] for i in top])
    llm.eval([nxt])
out = {
    "prompt": a.prompt,
    "prompt_ids": list(ids),
    "greedy_ids": greedy,
    "top5_logits": steps,
    "llama_cpp_python_version": llama_cpp.__version__,
    "threads": a.threads,
}
with open(a.out, "w") as fh:
    json.dump(out, fh, indent=1)
    fh.write("\n")
print(f"{a.out}: {greedy[:8]}...", file=sys.stderr)
