"""Driver for bench/vs-llamacpp: llmos bench and llama-cpp-python, interleaved."""
import argparse, json, os, platform, random, statistics, subprocess, sys, time

import llama_cpp


def llamacpp_run(llm, n_vocab, pp, tg, rng):
    """One pp and one tg measurement, like llama-bench (both from an empty cache)."""
    out = {}
    if pp:
        toks = [rng.randrange(n_vocab) for _ in range(pp)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        out["pp"] = pp / (time.perf_counter() - t0)
    if tg:
        llm.reset()
        tok = rng.randrange(n_vocab)
        t0 = time.perf_counter()
        for _ in range(tg):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        out["tg"] = tg / (time.perf_counter() - t0)
    return out


def llmos_run(exe, path, t, pp, tg):
    cmd = [exe, "bench", "-m", path, "-T", str(t), "-p", str(pp), "-n", str(tg), "-r", "1",
           "--json", "--no-bandwidth"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    x = r["results"][0]
    return {"pp": x["pp_tok_s"], "tg": x["tg_tok_s"]}, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llmos", required=True)
    ap.add_argument("--threads", default="1 2")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split()]
    rng = random.Random(1234)
    print(f"# llmos vs llama.cpp (llama-cpp-python {llama_cpp.__version__}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"{time.strftime('%Y-%m-%d')}, pp{a.pp} tg{a.tg}, median of {a.reps} interleaved reps")
    print("| model | type | threads | test | llmos t/s | llama.cpp t/s | ratio |")
    print("|---|---|---:|---|---:|---:|---:|")
    for path in a.models:
        name = os.path.basename(path)
        for t in threads:
            llm = llama_cpp.Llama(model_path=path, n_ctx=a.pp + a.tg + 16, n_batch=a.pp,
                                  n_ubatch=a.pp, n_threads=t, n_threads_batch=t,
                                  logits_all=False, verbose=False)
            n_vocab = llm.n_vocab()
            llamacpp_run(llm, n_vocab, min(a.pp, 64), min(a.tg, 16), rng)  # warm-up
            ours, theirs, ty = {"pp": [], "tg": []}, {"pp": [], "tg": []}, "?"
            for _ in range(a.reps):
                o, meta = llmos_run(a.llmos, path, t, a.pp, a.tg)
                ty = meta["type"]
                l = llamacpp_run(llm, n_vocab, a.pp, a.tg, rng)
                for k, n in (("pp", a.pp), ("tg", a.tg)):
                    if n:
                        ours[k].append(o[k])
                        theirs[k].append(l[k])
            del llm
            for k, n in (("pp", a.pp), ("tg", a.tg)):
                if not n:
                    continue
                mo, ml = statistics.median(ours[k]), statistics.median(theirs[k])
                print(f"| {name} | {ty} | {t} | {k}{n} | {mo:.1f} | {ml:.1f} | {mo / ml:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
