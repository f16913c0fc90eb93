"""Reference ids from the real `tiktoken` package for the mixed test corpus.

usage: tiktoken_ref.py RANKS_DIR OUT_DIR

Writes OUT_DIR/corpus.txt (>= 1 MB of mixed text, seeded) and OUT_DIR/{r50k,p50k,cl100k,o200k}_base.ids
(little-endian u32). tiktoken downloads its rank files at run time, which fails offline, so
its own encoding definitions are loaded with the rank files from RANKS_DIR instead.
"""
import glob, os, random, sys
from array import array

import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as public

ranks_dir, out_dir = sys.argv[1], sys.argv[2]
os.makedirs(out_dir, exist_ok=True)


def local_bpe(url, expected_hash=None):
    return tiktoken.load.load_tiktoken_bpe(os.path.join(ranks_dir, os.path.basename(url)))


public.load_tiktoken_bpe = local_bpe

rng = random.Random(20261129)
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
prose = []
for p in sorted(glob.glob("/usr/share/common-licenses/*")):
    if os.path.isfile(p):
        prose.append(open(p, encoding="utf-8", errors="replace").read())
code = [open(p, encoding="utf-8").read() for p in sorted(glob.glob(os.path.join(root, "crates", "*", "src", "*.rs")))]
words = " ".join(prose).split() or ["lorem", "ipsum", "dolor", "sit", "amet"]


def cjk(n):
    ranges = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0xAC00, 0xD7A3)]
    out = []
    for _ in range(n):
        a, b = rng.choice(ranges)
        out.append(chr(rng.randint(a, b)))
    return "".join(out)


def emoji(n):
    ranges = [(0x1F600, 0x1F64F), (0x1F300, 0x1F5FF), (0x1F680, 0x1F6FF), (0x2600, 0x26FF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def whitespace():
    return "".join(rng.choice([" ", "  ", "\t", "\n", "\n\n", "\r\n", "   \n"]) for _ in range(rng.randint(1, 6)))


parts, size = [], 0
while size < 1_100_000:
    kind = rng.random()
    if kind < 0.35:
        i = rng.randrange(len(words))
        s = " ".join(words[i : i + rng.randint(5, 80)])
    elif kind < 0.6 and code:
        c = rng.choice(code)
        i = rng.randrange(max(1, len(c) - 2000))
        s = c[i : i + rng.randint(100, 2000)]
    elif kind < 0.75:
        s = cjk(rng.randint(5, 60))
    elif kind < 0.85:
        s = emoji(rng.randint(1, 20))
    elif kind < 0.93:
        s = " ".join(str(rng.randint(0, 10**rng.randint(1, 12))) for _ in range(rng.randint(1, 10)))
    else:
        s = "".join(rng.choice(["'s", "'LL", "'Re", "don't", "I'M", "ÀÉÎõü", "Ω≈ç√", "naïve", "façade"]) for _ in range(rng.randint(1, 8)))
    s += whitespace()
    parts.append(s)
    size += len(s.encode("utf-8"))
text = "".join(parts)
with open(os.path.join(out_dir, "corpus.txt"), "w", encoding="utf-8", newline="") as fh:
    fh.write(text)
for name in ["r50k_base", "p50k_base", "cl100k_base", "o200k_base"]:
    enc = tiktoken.Encoding(**getattr(public, name)())
    ids = enc.encode_ordinary(text)
    array("I", ids).tofile(open(os.path.join(out_dir, name + ".ids"), "wb"))
    print(f"{name}: {len(text.encode())} bytes -> {len(ids)} ids (tiktoken {tiktoken.__version__})", file=sys.stderr)
