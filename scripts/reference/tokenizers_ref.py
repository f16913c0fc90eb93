"""Reference ids from the Hugging Face `tokenizers` package for each DIR/NAME/tokenizer.json,
on the given corpus, as `tokenizer.encode(text, add_special_tokens=False)` gives them
(added tokens in the text are matched, as the library does by default).

usage: tokenizers_ref.py CORPUS DIR   -> writes DIR/NAME/corpus.ids (little-endian u32)
"""
import os, sys
from array import array

import tokenizers

corpus, root = sys.argv[1], sys.argv[2]
text = open(corpus, encoding="utf-8", newline="").read()
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "tokenizer.json")
    if not os.path.isfile(path):
        continue
    tok = tokenizers.Tokenizer.from_file(path)
    ids = tok.encode(text, add_special_tokens=False).ids
    with open(os.path.join(root, name, "corpus.ids"), "wb") as fh:
        array("I", ids).tofile(fh)
    print(f"{name}: {len(text.encode())} bytes -> {len(ids)} ids (tokenizers {tokenizers.__version__})", file=sys.stderr)
