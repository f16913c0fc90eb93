"""Load against an OpenAI-compatible server: throughput with C concurrent streaming clients.

  serve_load.py throughput --url URL --clients 1,8 --tokens 128 --reps 3
      aggregate generated tokens/s and time to first token (p50) per client count
  serve_load.py abuse --url URL --requests 2000 --concurrency 32
      mixed valid, malformed and abandoned requests; counts statuses, checks no 5xx

Only the standard library; one JSON object per line on stdout.
"""

import argparse
import http.client
import json
import random
import socket
import statistics
import sys
import threading
import time
import urllib.parse

TEMP = 0.8

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the city of Paris for a traveller.",
    "Give advice to a new gardener.",
    "Tell me about the history of tea.",
    "Write a poem about the sea.",
    "Explain what a computer does.",
    "Describe a day in the life of a baker.",
]


def conn(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def stream_chat(url, key, prompt, max_tokens, seed, model):
    """(tokens, seconds to first token, total seconds) of one streamed chat answer."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": TEMP,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    c = conn(url)
    t0 = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    c.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:200]}")
    ttft = None
    pieces = 0
    usage = None
    buf = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1024)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                j = json.loads(line[6:])
                if j.get("usage"):
                    usage = j["usage"]
                for ch in j.get("choices", []):
                    if (ch.get("delta") or {}).get("content"):
                        pieces += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    c.close()
    tokens = usage["completion_tokens"] if usage else pieces
    return tokens, ttft or 0.0, time.perf_counter() - t0


def one_rep(a, clients, rep, tokens):
    """`clients` concurrent streams of `tokens` tokens: (tokens generated, wall seconds,
    times to first token); exits with a one-line error if any stream fails."""
    results = [None] * clients
    errors = [None] * clients
    def one(i):
        try:
            results[i] = stream_chat(a.url, a.key, PROMPTS[i % len(PROMPTS)],
                                     tokens, 1000 * rep + i, a.model)
        except Exception as e:  # a server that died or hung up: say so, once
            errors[i] = f"{type(e).__name__}: {e}"[:200]
    t0 = time.perf_counter()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    failed = [e for e in errors if e is not None]
    if failed:
        row = {"server": a.name, "clients": clients, "error":
               f"{len(failed)} of {clients} streams failed (first: {failed[0]})"}
        print(json.dumps(row), flush=True)
        sys.exit(f"serve_load: {a.name}: {row['error']}")
    return sum(r[0] for r in results), wall, [r[1] for r in results]


def throughput(a):
    counts = [int(x) for x in a.clients.split(",")]
    # an untimed round first, every prompt once: without it the first timed rep ran 20-30%
    # slower than the others on both servers (pages touched the first time, prompts not
    # yet in the prefix caches)
    one_rep(a, max(counts), -1, 16)
    out = []
    for clients in counts:
        rates, ttfts = [], []
        for rep in range(a.reps):
            toks, wall, tt = one_rep(a, clients, rep, a.tokens)
            rates.append(toks / wall)
            ttfts.extend(tt)
        row = {"server": a.name, "clients": clients, "tok_s": statistics.median(rates),
               "tok_s_reps": [round(x, 1) for x in rates],
               "ttft_p50_s": statistics.median(ttfts), "ttft_max_s": max(ttfts)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def abuse(a):
    """Mixed traffic: valid streamed and whole answers, malformed bodies, bad params,
    and clients that hang up mid-stream."""
    rng = random.Random(1)
    kinds = ["stream", "whole", "bad_json", "bad_param", "disconnect", "completion"]
    plan = [rng.choice(kinds) for _ in range(a.requests)]
    statuses = {}
    answered = {"ok": 0, "expected": 0}
    lock = threading.Lock()
    it = iter(enumerate(plan))

    def note(kind, status):
        with lock:
            statuses[f"{kind}:{status}"] = statuses.get(f"{kind}:{status}", 0) + 1

    def worker():
        while True:
            with lock:
                nxt = next(it, None)
            if nxt is None:
                return
            i, kind = nxt
            headers = {"Content-Type": "application/json"}
            if a.key:
                headers["Authorization"] = "Bearer " + a.key
            msg = {"model": a.model, "messages": [{"role": "user", "content": PROMPTS[i % 8]}],
                   "max_tokens": 16, "temperature": 0.7, "seed": i}
            try:
                c = conn(a.url)
                if kind == "bad_json":
                    c.request("POST", "/v1/chat/completions", '{"messages": [', headers)
                elif kind == "bad_param":
                    msg["temperature"] = "hot"
                    c.request("POST", "/v1/chat/completions", json.dumps(msg), headers)
                elif kind == "completion":
                    body = {"model": a.model, "prompt": PROMPTS[i % 8], "max_tokens": 16}
                    c.request("POST", "/v1/completions", json.dumps(body), headers)
                else:
                    msg["stream"] = kind in ("stream", "disconnect")
                    if kind == "disconnect":
                        msg["max_tokens"] = 400
                    c.request("POST", "/v1/chat/completions", json.dumps(msg), headers)
                r = c.getresponse()
                if kind == "disconnect":
                    r.read1(200) if hasattr(r, "read1") else r.read(200)
                    c.sock.shutdown(socket.SHUT_RDWR)
                    c.close()
                    note(kind, r.status)
                    continue
                body = r.read()
                c.close()
                note(kind, r.status)
                if kind in ("stream", "whole", "completion"):
                    with lock:
                        answered["expected"] += 1
                        good = r.status == 200 and (b"[DONE]" in body if kind == "stream" else b'"choices"' in body)
                        answered["ok"] += good
            except Exception as e:  # noqa: BLE001 - a transport error is a finding, counted
                note(kind, type(e).__name__)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    five = sum(n for k, n in statuses.items() if k.split(":")[1].startswith("5"))
    errors = sum(n for k, n in statuses.items() if not k.split(":")[1].isdigit())
    row = {"requests": a.requests, "concurrency": a.concurrency, "wall_s": round(wall, 1),
           "statuses": dict(sorted(statuses.items())), "server_errors_5xx": five,
           "transport_errors": errors, "valid_answered": answered["ok"],
           "valid_sent": answered["expected"]}
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["throughput", "abuse"])
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--name", default="server")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    a = p.parse_args()
    global TEMP
    TEMP = a.temperature
    if a.mode == "throughput":
        throughput(a)
    else:
        row = abuse(a)
        ok = row["server_errors_5xx"] == 0 and row["valid_answered"] == row["valid_sent"]
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
