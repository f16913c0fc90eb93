#!/usr/bin/env python3
"""Training throughput of PyTorch (eager, and torch.compile with --compile) on the model
llmos trains: llama blocks (RMSNorm, interleaved RoPE, causal attention, SwiGLU), tied head,
AdamW. Prints one JSON line per measurement: {"runtime", "shape", "tok_s", "gflops", ...}.
Used by bench/vs-pytorch, which runs llmos on the same shapes interleaved with this.
`vs_pytorch.py peak THREADS` prints torch's f32 matmul rate; `vs_pytorch.py summarize
FILE` prints the medians and ratios of a results file."""
import argparse, json, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(s, dim, heads, kv_heads, ffn, ctx):
        super().__init__()
        s.h, s.kv, s.d = heads, kv_heads, dim // heads
        s.n1 = nn.RMSNorm(dim, eps=1e-5)
        s.n2 = nn.RMSNorm(dim, eps=1e-5)
        s.q = nn.Linear(dim, dim, bias=False)
        s.k = nn.Linear(dim, kv_heads * s.d, bias=False)
        s.v = nn.Linear(dim, kv_heads * s.d, bias=False)
        s.o = nn.Linear(dim, dim, bias=False)
        s.g = nn.Linear(dim, ffn, bias=False)
        s.u = nn.Linear(dim, ffn, bias=False)
        s.dn = nn.Linear(ffn, dim, bias=False)
        f = 10000.0 ** (-torch.arange(0, s.d, 2).float() / s.d)
        ang = torch.arange(ctx).float()[:, None] * f[None, :]
        s.register_buffer("cos", ang.cos(), persistent=False)
        s.register_buffer("sin", ang.sin(), persistent=False)

    def rope(s, x):  # x [B, T, H, D], adjacent pairs rotated
        T = x.shape[1]
        c, sn = s.cos[:T, None, :], s.sin[:T, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * sn, x0 * sn + x1 * c), dim=-1).flatten(-2)

    def forward(s, x):
        B, T, C = x.shape
        h = s.n1(x)
        q = s.rope(s.q(h).view(B, T, s.h, s.d)).transpose(1, 2)
        k = s.rope(s.k(h).view(B, T, s.kv, s.d)).transpose(1, 2)
        v = s.v(h).view(B, T, s.kv, s.d).transpose(1, 2)
        if s.kv != s.h:
            k = k.repeat_interleave(s.h // s.kv, dim=1)
            v = v.repeat_interleave(s.h // s.kv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.o(a.transpose(1, 2).reshape(B, T, C))
        h = s.n2(x)
        return x + s.dn(F.silu(s.g(h)) * s.u(h))


class Model(nn.Module):
    def __init__(s, vocab, dim, layers, heads, kv_heads, ffn, ctx):
        super().__init__()
        s.emb = nn.Embedding(vocab, dim)
        s.blocks = nn.ModuleList(Block(dim, heads, kv_heads, ffn, ctx) for _ in range(layers))
        s.norm = nn.RMSNorm(dim, eps=1e-5)

    def forward(s, idx, tgt):
        x = s.emb(idx)
        for b in s.blocks:
            x = b(x)
        logits = s.norm(x) @ s.emb.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.reshape(-1))


def peak(threads):
    """Best 1024^3 f32 matmul rate of torch with `threads` threads, GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, t_end = 1e9, time.perf_counter() + 1.0
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best / 1e9


def summarize(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    peaks = [r for r in rows if r.get("kind") == "peak"]
    runs = [r for r in rows if r.get("kind") != "peak"]
    med = statistics.median
    # MFU against one peak per runtime for the whole session (the best measured), so the
    # noise of a per-run measurement does not move it
    best = {}
    for p in peaks:
        best[p["runtime"]] = max(best.get(p["runtime"], 0), p["gflops"])
    print(f"{'shape':5} {'runtime':14} {'tok/s (median)':>15} {'reps':>4} {'GFLOP/s':>8} "
          f"{'MFU/llmos GEMM':>15} {'MFU/torch GEMM':>15} {'vs torch eager':>15} {'MFU/run peak':>13}")
    for shape in sorted({r["shape"] for r in runs}):
        eager = [r["tok_s"] for r in runs if r["shape"] == shape and r["runtime"] == "torch eager"]
        for rt in ("llmos", "torch eager", "torch.compile"):
            xs = [r for r in runs if r["shape"] == shape and r["runtime"] == rt]
            if not xs:
                continue
            t = med([r["tok_s"] for r in xs])
            gf = 6 * xs[0]["params"] * t / 1e9
            ratio = f"{t / med(eager):.2f}x" if eager else "-"
            m_l = f"{gf / best['llmos'] * 100:.0f}%" if "llmos" in best else "-"
            m_t = f"{gf / best['torch'] * 100:.0f}%" if "torch" in best else "-"
            # llmos's own figure: each run's MFU against the GEMM peak it measured at its
            # start, minutes from the steps (the machine's load then), median over runs
            own = [r["mfu"] for r in xs if r.get("mfu") is not None]
            m_o = f"{med(own) * 100:.0f}%" if own else "-"
            print(f"{shape:5} {rt:14} {t:15.0f} {len(xs):4} {gf:8.1f} {m_l:>15} {m_t:>15} {ratio:>15} {m_o:>13}")
    for p in peaks:
        print(f"GEMM peak ({p['runtime']}, {p['threads']} threads): {p['gflops']:.1f} GFLOP/s")
    print("MFU = 6 x parameters (embedding excluded unless it is the tied head) x tokens/s over the best GEMM peak of the session;")
    print("MFU/run peak: the median of each llmos run's own MFU, against the GEMM peak that run measured as it started")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "summarize":
        return summarize(sys.argv[2])
    if len(sys.argv) > 1 and sys.argv[1] == "peak":
        t = int(sys.argv[2])
        print(json.dumps({"kind": "peak", "runtime": "torch", "threads": t, "gflops": peak(t)}))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--ffn", type=int, required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Model(a.vocab, a.dim, a.layers, a.heads, a.heads, a.ffn, a.ctx)
    params = sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    step = m
    if a.compile:
        step = torch.compile(m)
    g = torch.Generator().manual_seed(1)
    def batch():
        x = torch.randint(0, a.vocab, (a.batch, a.ctx + 1), generator=g)
        return x[:, :-1], x[:, 1:]
    def one():
        x, y = batch()
        loss = step(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        return loss.item()
    for _ in range(2):  # warm-up (and compilation)
        one()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        one()
    dt = time.perf_counter() - t0
    tok_s = a.steps * a.batch * a.ctx / dt
    print(json.dumps({"runtime": "torch.compile" if a.compile else "torch eager", "shape": a.shape,
                      "torch": torch.__version__, "threads": a.threads, "params": params,
                      "tok_s": tok_s, "gflops": 6 * params * tok_s / 1e9}), flush=True)


if __name__ == "__main__":
    main()
