#!/usr/bin/env python3
"""prefixd server benchmarks (`make bench`): a bounded load generator on
loopback, figures and same-run ratios, no assertions.

  load.py serve  --model M [--tokenizer T]   64 concurrent completions, one task
                                             vs spread over 64 tasks; latency,
                                             time to first token, aggregate
                                             tokens/s vs one request alone
  load.py train  --model M --tokenizer T     completion latency with and without
                                             a fine-tuning job running
  load.py hotload --model M --tokenizer T    rename-to-servable latency of 200
                                             prefix files through the watcher
  load.py prefix  --model M [--tokenizer T]  decode speed of one request with a
                                             P=20 prefix vs none
  load.py trainspeed --model M [--tokenizer T] [--params N]
                                             training tokens/s (forward + backward
                                             into the prefix) with `prefixd train`
  load.py registry --model M --tokenizer T   10,000 registered prefixes: start-up
                                             time, resident bytes per prefix vs
                                             raw tensor bytes, lookup latency
  load.py distill --model M [--tokenizer T] [--prompt-tokens N] [--slots P]
                                             a long prompt (about N tokens) as a
                                             hard prompt vs distilled into a P-slot
                                             prefix (`prefixd train --distill-prompt`,
                                             a small job: speed only): time to
                                             first token, prefill and decode tok/s
  load.py table --model M [--repeat N] [--step-tokens T] [--kv-dtype f16] [--llama-server BIN]
                                             issue 13's table: 64 streamed
                                             completions, 8 concurrent, 37-token
                                             prompts (no prompt-cache hits), 64
                                             tokens; base model and each request
                                             on its own task (P = 20); N
                                             alternated runs, medians; BIN: the
                                             same load on llama-server -np 8 -t 2
                                             and the target ratios
  load.py shared --model M [--llama-server BIN]
                                             16 requests sharing a 500-token system
                                             prompt, 4 concurrent, with and without
                                             the prompt cache (TTFT, tokens/s); BIN:
                                             the same with llama-server's cache_prompt
  load.py capacity --model M                 concurrent 1,000-token sequences
                                             admitted under a 1 GiB KV budget
  load.py kvdtype --model M                  kv_dtype f32 vs f16: 16 tasks that are
                                             prompt-built prefixes of a 500-token
                                             system prompt served round-robin under
                                             the default registry budget (resident,
                                             reloads, latency evicted vs resident),
                                             and capacity for both

Only 127.0.0.1; every loop is bounded in count and time. llama.cpp is used
only when --llama-server names its binary (never by `make bench`), started
after prefixd has stopped so the two never share the CPU."""
import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, os.environ.get("PREFIXD_BIN", "build/prefixd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """A server process on 127.0.0.1:port; body_extra is merged into every
    streamed completion body."""
    body_extra = {}

    def launch(self, tmp, argv, what):
        self.log = open(os.path.join(tmp, f"server-{self.port}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.req("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{what} did not become ready; see " + self.log.name)

    def req(self, method, path, body=None, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {}
            if body is not None:
                body = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stream(self, body, timeout=600):
        """Streams one completion; returns (latency s, ttft s, completion tokens)."""
        body = dict(body, stream=True, stream_options={"include_usage": True}, **self.body_extra)
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                return None
            ttft, tokens = None, 0
            buf = b""
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    data = ev[len(b"data: "):]
                    if data == b"[DONE]":
                        continue
                    obj = json.loads(data)
                    if obj.get("choices") and obj["choices"][0].get("text") and ttft is None:
                        ttft = time.perf_counter() - t0
                    if obj.get("usage"):
                        tokens = obj["usage"]["completion_tokens"]
            return time.perf_counter() - t0, ttft or 0.0, tokens
        finally:
            c.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Server(HttpServer):
    """prefixd serve with a generated config (extra overrides keys)."""

    def __init__(self, tmp, model, tokenizer, registry, extra=None):
        self.port = free_port()
        cfg = {"model": model, "registry": registry, "data": os.path.join(tmp, "data"),
               "listen": f"127.0.0.1:{self.port}", "log_level": "warn",
               "max_seqs": 128, "queue_limit": 4096, "registry_rescan_ms": 1000}
        if tokenizer:
            cfg["tokenizer"] = tokenizer
        cfg.update(extra or {})
        path = os.path.join(tmp, f"cfg-{self.port}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.launch(tmp, [BIN, "serve", "--config", path], "prefixd serve")


class LlamaServer(HttpServer):
    """llama.cpp's llama-server (only with --llama-server BIN): 8 slots, 2
    threads, on the same model file, as the issue's comparison."""

    def __init__(self, tmp, binary, model, cache_prompt, slot_ctx=512):
        self.port = free_port()
        self.body_extra = {"cache_prompt": cache_prompt}
        # -c is split among the 8 slots: each gets slot_ctx tokens
        self.launch(tmp, [binary, "-m", model, "-np", "8", "-t", "2", "-c", str(8 * slot_ctx),
                          "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"],
                    "llama-server")


@contextlib.contextmanager
def bench_server(a, extra=None):
    """A prefixd server on a's model with an empty registry in a fresh temp
    dir, config extra; stopped and the dir removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        reg = os.path.join(tmp, "registry")
        os.makedirs(reg)
        srv = Server(tmp, a.model, a.tokenizer, reg, extra)
        try:
            yield srv
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base_model(srv):
    """The base model's id (the first of /v1/models)."""
    return json.loads(srv.req("GET", "/v1/models")[1])["data"][0]["id"]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_load(srv, tasks, concurrency, per_worker, max_tokens, prompt="One day"):
    """concurrency workers, each sending per_worker streamed requests in a row."""
    lat, ttft, toks, fails = [], [], [], [0]
    lock = threading.Lock()

    def worker(i):
        for k in range(per_worker):
            task = tasks[(i + k * concurrency) % len(tasks)]
            r = srv.stream({"model": task, "prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0.8, "seed": i * 1000 + k})
            with lock:
                if r is None:
                    fails[0] += 1
                else:
                    lat.append(r[0]); ttft.append(r[1]); toks.append(r[2])

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    return {"tokens_per_s": sum(toks) / wall, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "requests": len(lat),
            "failed": fails[0], "tokens": sum(toks), "wall": wall}


def make_tasks(srv, n):
    names = []
    for i in range(n):
        name = f"task{i:03d}"
        st, body = srv.req("PUT", f"/v1/prefixes/{name}",
                           {"from_prompt": f"Story number {i}: once there was a child who liked {i} things."})
        if st not in (200, 201):
            raise SystemExit(f"PUT {name}: {st} {body[:200]}")
        names.append(name)
    return names


def cmd_serve(a):
    with bench_server(a, {"max_step_tokens": 512}) as srv:
        tasks = make_tasks(srv, 64)
        alone = run_load(srv, tasks[:1], 1, 3, a.max_tokens)
        one = run_load(srv, tasks[:1], a.concurrency, a.per_worker, a.max_tokens)
        spread = run_load(srv, tasks, a.concurrency, a.per_worker, a.max_tokens)
    print(f"server load, {os.path.basename(a.model)}: {a.concurrency} concurrent streamed "
          f"completions x {a.per_worker} each, {a.max_tokens} tokens")
    print(f"  {'':14} {'tok/s':>9} {'p50 s':>8} {'p99 s':>8} {'ttft p50':>9} {'ttft p99':>9} {'req':>5} {'fail':>5}")
    for label, r in (("one request", alone), ("1 task", one), ("64 tasks", spread)):
        print(f"  {label:14} {r['tokens_per_s']:9.1f} {r['p50']:8.3f} {r['p99']:8.3f} "
              f"{r['ttft_p50']:9.3f} {r['ttft_p99']:9.3f} {r['requests']:5d} {r['failed']:5d}")
    print(f"  mixed-task / single-task throughput = {spread['tokens_per_s'] / one['tokens_per_s']:.3f} (target >= 0.95)")
    print(f"  aggregate (64 tasks) / one request alone = {spread['tokens_per_s'] / alone['tokens_per_s']:.2f}x")


def cmd_train(a):
    with bench_server(a, {"checkpoint_every": 50}) as srv:
        base_id = base_model(srv)
        idle = run_load(srv, [base_id], 4, 150, 32)
        data = open(os.path.join(ROOT, "tests/data/train/dragon.train.jsonl"), "rb").read()
        boundary = "benchboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.jsonl\"\r\n"
                f"Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        c.request("POST", "/v1/files", body=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = c.getresponse()
        fid = json.loads(r.read())["id"]
        c.close()
        st, job = srv.req("POST", "/v1/fine_tuning/jobs",
                          {"training_file": fid, "suffix": "benchjob",
                           "method": {"type": "prefix", "prefix": {"hyperparameters": {"n_epochs": 50}}}})
        jid = json.loads(job)["id"]
        deadline = time.time() + 60
        while time.time() < deadline:
            if json.loads(srv.req("GET", f"/v1/fine_tuning/jobs/{jid}")[1])["status"] == "running":
                break
            time.sleep(0.1)
        t0 = time.time()
        busy = run_load(srv, [base_id], 4, 150, 32)
        evs = json.loads(srv.req("GET", f"/v1/fine_tuning/jobs/{jid}/events?limit=1000")[1])["data"]
        steps = [e["data"] for e in evs if e.get("type") == "metrics"]
        status = json.loads(srv.req("GET", f"/v1/fine_tuning/jobs/{jid}")[1])["status"]
        srv.req("POST", f"/v1/fine_tuning/jobs/{jid}/cancel")
        busy_s = time.time() - t0
    print("completion latency with a training job running (4 concurrent, 32 tokens)")
    print(f"  idle:     p50 {idle['p50'] * 1000:7.1f} ms  p99 {idle['p99'] * 1000:7.1f} ms  {idle['tokens_per_s']:8.1f} tok/s")
    print(f"  training: p50 {busy['p50'] * 1000:7.1f} ms  p99 {busy['p99'] * 1000:7.1f} ms  {busy['tokens_per_s']:8.1f} tok/s"
          f"  (job {status}, {len(steps)} metric events in {busy_s:.1f} s)")
    print(f"  p99 with training / p99 idle = {busy['p99'] / idle['p99']:.2f}")
    tps = [d.get("tokens_per_second") for d in steps if d.get("tokens_per_second")]
    if tps:
        print(f"  training while serving: {tps[0]:.0f} tokens/s (forward + backward, train_threads 1)")


def from_prompt(a, task, text, out):
    """`prefixd prefix from-prompt` of text into out/<task>.safetensors."""
    subprocess.run([BIN, "prefix", "from-prompt", "--model", a.model] +
                   (["--tokenizer", a.tokenizer] if a.tokenizer else []) +
                   ["--task", task, "--text", text, "--out", out],
                   check=True, capture_output=True)


def cmd_hotload(a):
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        reg = os.path.join(tmp, "registry")
        stage = os.path.join(tmp, "stage")
        os.makedirs(reg)
        os.makedirs(stage)
        srv = Server(tmp, a.model, a.tokenizer, reg, {"registry_rescan_ms": 60000})
        try:
            names = [f"hot{i:04d}" for i in range(a.files)]
            for name in names:  # complete files, made outside the registry
                from_prompt(a, name, f"Once upon a time {name}", stage)
            lat = []
            for name in names:
                tmpf = os.path.join(stage, f"{name}.safetensors")
                t0 = time.perf_counter()
                os.rename(tmpf, os.path.join(reg, f"{name}.safetensors"))
                while True:
                    st, _ = srv.req("GET", f"/v1/prefixes/{name}")
                    if st == 200:
                        break
                    if time.perf_counter() - t0 > 5:
                        raise SystemExit(f"{name} not servable after 5 s")
                lat.append(time.perf_counter() - t0)
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hot-load, rename into the registry -> GET /v1/prefixes/{{task}} 200, {len(lat)} files:")
    print(f"  p50 {pct(lat, 50) * 1000:.2f} ms  p99 {pct(lat, 99) * 1000:.2f} ms  max {max(lat) * 1000:.2f} ms (target p99 <= 50 ms)")


def token_ids(srv, text, n):
    """n token ids of text repeated (no BOS), through /tokenize."""
    st, body = srv.req("POST", "/tokenize", {"content": text, "add_special": False})
    ids = json.loads(body)["tokens"]
    if not ids:
        raise SystemExit("/tokenize returned no tokens")
    return (ids * (n // len(ids) + 1))[:n]


def run_prompts(srv, bodies, concurrency, sample_rss=None):
    """Streams bodies with concurrency workers; figures as run_load, plus peak RSS."""
    lat, ttft, toks, fails, peak = [], [], [], [0], [0]
    lock = threading.Lock()
    todo = list(enumerate(bodies))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                _, b = todo.pop(0)
            r = srv.stream(b)
            with lock:
                if r is None:
                    fails[0] += 1
                else:
                    lat.append(r[0]); ttft.append(r[1]); toks.append(r[2])

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in th:
        t.start()
    while any(t.is_alive() for t in th):
        if sample_rss:
            peak[0] = max(peak[0], rss_kb(sample_rss))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": sum(toks) / wall, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "requests": len(lat),
            "failed": fails[0], "rss_mib": peak[0] / 1024}


def table_bodies(models, prompt, uniq, first=0):
    """The issue's 64 requests: 37-token prompts whose first three tokens are
    distinct per request (warm-ups use another `first`), so nothing comes
    from a prompt cache and every request prefills its whole prompt."""
    n = len(uniq)
    return [{"model": models[i % len(models)],
             "prompt": [uniq[j % n], uniq[j // n % n], uniq[j // (n * n) % n]] + prompt[3:],
             "max_tokens": 64, "temperature": 0.8, "seed": i}
            for i, j in ((i, first + i) for i in range(64))]


def median_run(runs):
    """The run of median tokens/s (its own latencies, not a mix of runs)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


def span(runs, key="tokens_per_s", fmt="{:.1f}"):
    v = [r[key] for r in runs]
    return fmt.format(min(v)) + ("" if len(v) == 1 else "-" + fmt.format(max(v)))


def cmd_table(a):
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    engine = []
    try:
        reg = os.path.join(tmp, "registry")
        os.makedirs(reg)
        srv = Server(tmp, a.model, a.tokenizer, reg,
                     {"max_step_tokens": a.step_tokens, "kv_dtype": a.kv_dtype})
        try:
            base_id = base_model(srv)
            prompt = token_ids(srv, "Once upon a time there was a little girl who liked to "
                                    "play in the garden with her dog. ", 37)
            uniq = list(dict.fromkeys(prompt))  # distinct ids (the text repeats)
            if len(uniq) ** 3 < 64 * (a.repeat + 2):
                raise SystemExit("the prompt text has too few distinct tokens")
            tasks = []
            for i in range(64):
                st, body = srv.req("PUT", f"/v1/prefixes/t{i:02d}",
                                   {"from_prompt": token_text(i)})
                if st not in (200, 201):
                    raise SystemExit(f"PUT t{i:02d}: {st} {body[:200]}")
                tasks.append(f"t{i:02d}")
            P = json.loads(srv.req("GET", "/v1/prefixes/t00")[1])["num_virtual_tokens"]

            run_prompts(srv, table_bodies([base_id], prompt, uniq, 64)[:8], 8)  # warm-up
            bases, spreads = [], []
            for k in range(a.repeat):  # alternated: a slow spell hits both
                # the same requests each repeat would hit the prompt cache
                # (prefixd's is exact and always on): another first token
                first = 128 + 64 * k if k else 0
                # odd repeats run the tasks first: a drift in the machine's
                # load does not always favour the same one
                order = (("base", [base_id], bases), ("tasks", tasks, spreads))
                figures = {}
                for name, models, runs in (order if k % 2 == 0 else order[::-1]):
                    m0 = metrics(srv)
                    runs.append(run_prompts(srv, table_bodies(models, prompt, uniq, first), 8,
                                            srv.proc.pid))
                    figures[name] = (m0, metrics(srv))
                engine.append(figures)
        finally:
            srv.stop()
        llamas = []
        if a.llama_server:  # after prefixd has stopped: never two servers at once
            ls = LlamaServer(tmp, a.llama_server, a.model, False)
            try:
                run_prompts(ls, table_bodies([base_id], prompt, uniq, 64)[:8], 8)
                for k in range(a.repeat):
                    first = 128 + 64 * k if k else 0
                    llamas.append(run_prompts(ls, table_bodies([base_id], prompt, uniq, first),
                                              8, ls.proc.pid))
            finally:
                ls.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base, spread = median_run(bases), median_run(spreads)
    print(f"issue 13 load, {os.path.basename(a.model)}: 64 streamed completions, 8 concurrent, "
          f"37-token prompts, 64 tokens each, no prompt-cache hits, KV {a.kv_dtype}"
          + (f"; the median of {a.repeat} alternated runs" if a.repeat > 1 else ""))
    print(f"  {'':28} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7} {'ttft p50':>9} {'peak RSS':>9} {'fail':>5}")
    rows = [("prefixd, base model", base), (f"prefixd, 64 tasks (P = {P})", spread)]
    if llamas:
        rows.append(("llama-server -np 8 -t 2", median_run(llamas)))
    for label, r in rows:
        print(f"  {label:28} {r['tokens_per_s']:7.1f} {r['p50']:7.2f} {r['p99']:7.2f} "
              f"{r['ttft_p50']:9.3f} {r['rss_mib']:7.0f} M {r['failed']:5d}")
    if a.repeat > 1:
        pairs = [dict(tokens_per_s=t["tokens_per_s"] / b["tokens_per_s"]) for b, t in zip(bases, spreads)]
        print(f"  tok/s over the runs: base {span(bases)}, 64 tasks {span(spreads)}"
              + (f", llama-server {span(llamas)}" if llamas else "")
              + f"; 64 tasks / base per pair {span(pairs, fmt='{:.3f}')}")
    print(f"  64 tasks / base = {spread['tokens_per_s'] / base['tokens_per_s']:.3f} (target >= 0.98)")
    if llamas:
        ll = median_run(llamas)
        print(f"  prefixd base / llama-server: tok/s {base['tokens_per_s'] / ll['tokens_per_s']:.2f}x "
              f"(target >= 1.2x), p99 {base['p99'] / ll['p99']:.2f}x (target <= 0.8x), "
              f"TTFT p50 {base['ttft_p50'] / ll['ttft_p50']:.2f}x")
    for k, figures in enumerate(engine):
        for label, (a0, a1) in (("base model", figures["base"]), ("64 tasks", figures["tasks"])):
            d = {key: a1.get(key, 0) - a0.get(key, 0) for key in (
                "prefixd_prompt_cache_hits_total", "prefixd_engine_steps_total",
                "prefixd_batch_size_sum", "prefixd_registry_loads_total")}
            print(f"  run {k + 1}, {label}: {d['prefixd_engine_steps_total']:.0f} engine steps, "
                  f"{d['prefixd_batch_size_sum'] / max(d['prefixd_engine_steps_total'], 1):.1f} "
                  f"tokens/step, {d['prefixd_prompt_cache_hits_total']:.0f} prompt-cache hits, "
                  f"{d['prefixd_registry_loads_total']:.0f} prefix loads")


def token_text(i):
    # BOS + dummy space + 18 bytes: 20 slots on byte-level vocabularies (as cmd_prefix)
    return f"{i:02d}abcdefghijklmnop"


def cmd_shared(a):
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        reg = os.path.join(tmp, "registry")
        os.makedirs(reg)
        srv = Server(tmp, a.model, a.tokenizer, reg, {"max_step_tokens": 512})
        try:
            base_id = base_model(srv)
            system = token_ids(srv, "You are a helpful assistant who answers briefly and "
                                    "politely, and never makes things up. ", 500)
            question = token_ids(srv, "What is the capital of France? ", 10)
            uniq = list(dict.fromkeys(system))  # distinct ids (the text repeats)

            def bodies(shared):
                # without: the first two tokens differ per request, so nothing is shared
                head = [system[0], system[1]]
                return [{"model": base_id,
                         "prompt": (head if shared else
                                    [uniq[i % len(uniq)], uniq[i // len(uniq) % len(uniq)]]) +
                                   system[2:] + question[:9] + [question[i % 10]],
                         "max_tokens": 32, "temperature": 0.8, "seed": i}
                        for i in range(16)]

            def both(server):
                without = run_prompts(server, bodies(False), 4)
                if server is not srv:  # prefixd's prompt cache is always on
                    server.body_extra = dict(server.body_extra, cache_prompt=True)
                server.stream(bodies(True)[0])  # fills the cache
                m0 = metrics(server) if server is srv else {}
                with_cache = run_prompts(server, bodies(True), 4)
                m1 = metrics(server) if server is srv else {}
                return without, with_cache, m0, m1

            without, with_cache, m0, m1 = both(srv)
        finally:
            srv.stop()
        ll = None
        if a.llama_server:  # after prefixd has stopped: never two servers at once
            ls = LlamaServer(tmp, a.llama_server, a.model, False, slot_ctx=1024)
            try:
                ll = both(ls)
            finally:
                ls.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    saved = m1.get("prefixd_prompt_cache_tokens_total", 0) - m0.get("prefixd_prompt_cache_tokens_total", 0)
    print(f"shared 500-token system prompt, {os.path.basename(a.model)}: 16 requests, 4 concurrent, "
          f"32 tokens each")
    print(f"  {'':30} {'tok/s':>7} {'ttft p50':>9} {'ttft p99':>9} {'p50 s':>7}")
    rows = [("prefixd, without cache", without), ("prefixd, with cache", with_cache)]
    if ll:
        rows += [("llama-server, cache_prompt off", ll[0]), ("llama-server, cache_prompt on", ll[1])]
    for label, r in rows:
        print(f"  {label:30} {r['tokens_per_s']:7.1f} {r['ttft_p50']:9.3f} {r['ttft_p99']:9.3f} "
              f"{r['p50']:7.2f}")
    print(f"  TTFT p50 without / with = {without['ttft_p50'] / max(with_cache['ttft_p50'], 1e-9):.1f}x "
          f"(target >= 5x); {saved:.0f} prompt tokens served from the cache")
    if ll:
        for label, ours, theirs in (("without cache", without, ll[0]), ("with cache", with_cache, ll[1])):
            print(f"  prefixd / llama-server, {label}: tok/s "
                  f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, TTFT p50 "
                  f"{ours['ttft_p50'] / max(theirs['ttft_p50'], 1e-9):.2f}x")


def metrics(srv):
    out = {}
    for line in srv.req("GET", "/metrics")[1].decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def capacity(a, extra=None):
    """Admission is by reservation (prompt + max_tokens), so the number of
    sequences admitted at once under the budget is what fits: requests of a
    1-token prompt and 999 tokens to generate are sent until some wait, then
    all are cancelled by closing their connections. Returns (blocks, block
    bytes, peak)."""
    with bench_server(a, dict({"kv_budget_mb": 1024}, **(extra or {}))) as srv:
        base_id = base_model(srv)
        m = metrics(srv)
        blocks, bb = m["prefixd_kv_blocks_total"], m["prefixd_kv_block_bytes"]
        socks, peak = [], 0
        for i in range(400):
            body = json.dumps({"model": base_id, "prompt": [i % 200 + 10], "max_tokens": 999,
                               "stream": True}).encode()
            c = socket.create_connection(("127.0.0.1", srv.port))
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                      b"\r\n\r\n" + body)
            socks.append(c)
            # admitted between engine steps: wait (bounded) for it to leave the queue
            deadline = time.time() + 5
            while time.time() < deadline:
                m = metrics(srv)
                if m["prefixd_running_sequences"] == len(socks):
                    break
                time.sleep(0.02)
            peak = max(peak, m["prefixd_running_sequences"])
            if m["prefixd_queue_depth"] > 0:
                break
            if m["prefixd_running_sequences"] < len(socks):  # refused (context < 1,000)
                break
        for c in socks:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
    return blocks, bb, peak


def cmd_capacity(a):
    blocks, bb, peak = capacity(a)
    print(f"1 GiB KV budget, {os.path.basename(a.model)}: {blocks:.0f} blocks of {bb / 2**20:.2f} MiB; "
          f"{peak:.0f} concurrent 1,000-token sequences admitted (the next one waits)")


def system_prompt(srv, i, n):
    """Text of task i's system prompt that encodes to at most n tokens (BOS
    added by the prefix build), as close to n as whole words allow."""
    words = (f"Task {i}: you are a careful assistant for team {i}. Answer briefly and "
             "politely, cite what you were told, never make things up, and say so when "
             "you do not know. ").split() * 200
    count = lambda k: len(json.loads(srv.req("POST", "/tokenize", {
        "content": " ".join(words[:k]), "add_special": False})[1])["tokens"])
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose tokens stay within n - 1
        mid = (lo + hi + 1) // 2
        if count(mid) <= n - 1:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]), count(lo) + 1


def cmd_kvdtype(a):
    """Issue 13's prefix memory: 16 prompt-built prefixes of a 500-token system
    prompt, requests round-robin over them (sequential, 8 tokens each, 3
    rounds), under the default registry budget (512 MiB), with the KV (and so
    the resident prefixes) in F32 and in F16. A request whose task was not
    resident reloads it from disk (prefixd_registry_loads_total grows during
    it): its latency against a resident task's is the reload cost (each of 4
    tasks is then asked twice in a row, the second time resident, so both
    latencies are measured under each dtype)."""
    rows = {}
    for dt in ("f32", "f16"):
        with bench_server(a, {"kv_dtype": dt, "max_step_tokens": 512}) as srv:
            names, n_tok = [], 0
            for i in range(16):
                text, n_tok = system_prompt(srv, i, 500)
                st, body = srv.req("PUT", f"/v1/prefixes/sys{i:02d}", {"from_prompt": text})
                if st not in (200, 201):
                    raise SystemExit(f"PUT sys{i:02d}: {st} {body[:200]}")
                names.append(f"sys{i:02d}")
            m0 = metrics(srv)
            warm, cold = [], []

            def one(t):
                before = metrics(srv)["prefixd_registry_loads_total"]
                r = srv.stream({"model": t, "prompt": " Hello", "max_tokens": 8,
                                "temperature": 0})
                if r is None:
                    raise SystemExit(f"completion on {t} failed")
                (cold if metrics(srv)["prefixd_registry_loads_total"] > before
                 else warm).append(r[0])

            for rnd in range(3):
                for t in names:
                    one(t)
            m1 = metrics(srv)
            for t in names[:4]:  # twice in a row: the second is resident (the reference)
                one(t)
                one(t)
        rows[dt] = dict(n_tok=n_tok, resident=m1["prefixd_registry_resident_prefixes"],
                        bytes=m1["prefixd_registry_resident_bytes"],
                        reloads=m1["prefixd_registry_loads_total"] - m0["prefixd_registry_loads_total"],
                        evictions=m1["prefixd_registry_evictions_total"] - m0["prefixd_registry_evictions_total"],
                        warm=statistics.median(warm) if warm else float("nan"),
                        cold=statistics.median(cold) if cold else float("nan"),
                        n_warm=len(warm), n_cold=len(cold))
    print(f"prefix memory, {os.path.basename(a.model)}: 16 tasks, each a prompt-built prefix of a "
          f"{rows['f32']['n_tok']}-token system prompt; 48 requests round-robin (8 tokens each), "
          f"default registry budget 512 MiB")
    print(f"  {'kv_dtype':8} {'resident':>8} {'MiB/prefix':>10} {'reloads':>7} {'evictions':>9} "
          f"{'resident p50 s':>14} {'evicted p50 s':>13}")
    for dt, r in rows.items():
        per = r["bytes"] / max(r["resident"], 1) / 2**20
        print(f"  {dt:8} {r['resident']:8.0f} {per:10.1f} {r['reloads']:7.0f} {r['evictions']:9.0f} "
              f"{r['warm']:14.3f} {r['cold']:13.3f}   ({r['n_warm']} resident, {r['n_cold']} reloaded)")
    print("  (reloads and evictions: over the 48 round-robin requests; latencies: 8 tokens "
          "after the prefix, median)")
    for dt in ("f32", "f16"):
        blocks, bb, peak = capacity(a, {"kv_dtype": dt})
        print(f"  capacity, kv_dtype {dt}: 1 GiB = {blocks:.0f} blocks of {bb / 2**20:.2f} MiB; "
              f"{peak:.0f} concurrent 1,000-token sequences")


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cmd_prefix(a):
    with bench_server(a) as srv:
        text = "abcdefghijklmnopqr"  # BOS + dummy space + 18 bytes: 20 slots on byte-level vocabularies
        st, body = srv.req("PUT", "/v1/prefixes/p20", {"from_prompt": text})
        P = json.loads(body).get("num_virtual_tokens")
        base_id = base_model(srv)
        res = {}
        for model in (base_id, "p20"):
            best = 0.0
            for _ in range(3):
                r = srv.stream({"model": model, "prompt": "One day", "max_tokens": a.max_tokens,
                                "temperature": 0.8, "seed": 1})
                if r and r[0] > r[1]:
                    best = max(best, (r[2] - 1) / (r[0] - r[1]))  # decode rate after the first token
            res[model] = best
    print(f"decode, one request, {os.path.basename(a.model)}: no prefix {res[base_id]:.1f} tok/s, "
          f"P={P} prefix {res['p20']:.1f} tok/s")
    print(f"  with prefix / without = {res['p20'] / res[base_id]:.3f} (target >= 0.95)")


def cmd_registry(a):
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        reg = os.path.join(tmp, "registry")
        empty = os.path.join(tmp, "empty")
        os.makedirs(reg)
        os.makedirs(empty)
        from_prompt(a, "t00000", "Once upon a time", tmp)
        src = open(os.path.join(tmp, "t00000.safetensors"), "rb").read()
        hlen = int.from_bytes(src[:8], "little")
        header = json.loads(src[8:8 + hlen])
        raw = sum(v["data_offsets"][1] - v["data_offsets"][0]
                  for k, v in header.items() if k != "__metadata__")
        for i in range(a.n):
            name = f"t{i:05d}".encode()
            with open(os.path.join(reg, f"t{i:05d}.safetensors"), "wb") as f:
                f.write(src.replace(b'"task":"t00000"', b'"task":"' + name + b'"'))
        base = Server(tmp, a.model, a.tokenizer, empty, {"registry_budget_mb": 0})
        rss0 = rss_kb(base.proc.pid)
        base.stop()
        t0 = time.perf_counter()
        srv = Server(tmp, a.model, a.tokenizer, reg, {"registry_budget_mb": 0, "registry_rescan_ms": 3600000})
        startup = time.perf_counter() - t0
        try:
            n = len(json.loads(srv.req("GET", "/v1/prefixes")[1])["data"])
            rss1 = rss_kb(srv.proc.pid)
            lat = []
            for i in range(0, a.n, max(1, a.n // 500)):
                t1 = time.perf_counter()
                st, _ = srv.req("GET", f"/v1/prefixes/t{i:05d}")
                lat.append(time.perf_counter() - t1)
            tl = []
            for i in range(0, a.n, max(1, a.n // 100)):
                t1 = time.perf_counter()
                srv.req("POST", "/v1/completions", {"model": f"t{i:05d}", "prompt": "One day",
                                                     "max_tokens": 1, "temperature": 0})
                tl.append(time.perf_counter() - t1)
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per = (rss1 - rss0) * 1024 / max(1, n)
    print(f"registry of {n} prefixes ({raw} tensor bytes each):")
    print(f"  start-up to ready {startup:.2f} s; resident {per:.0f} bytes per prefix = "
          f"{per / raw:.2f} x raw tensor bytes")
    print(f"  GET /v1/prefixes/{{task}} p50 {pct(lat, 50) * 1e3:.2f} ms p99 {pct(lat, 99) * 1e3:.2f} ms; "
          f"1-token completion across tasks p50 {pct(tl, 50) * 1e3:.2f} ms p99 {pct(tl, 99) * 1e3:.2f} ms")


def cmd_trainspeed(a):
    import random
    import re
    rnd = random.Random(1)
    words = ["the", "little", "dog", "ran", "to", "park", "and", "saw", "a", "big", "red", "ball",
             "she", "was", "happy", "day", "one", "tree", "friend", "play"]
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        data = os.path.join(tmp, "d.jsonl")
        with open(data, "w") as f:
            for _ in range(a.lines):
                f.write(json.dumps({"prompt": " ".join(rnd.choice(words) for _ in range(8)),
                                    "completion": " " + " ".join(rnd.choice(words) for _ in range(40))}) + "\n")
        t0 = time.perf_counter()
        p = subprocess.run([BIN, "train", "--model", a.model] +
                           (["--tokenizer", a.tokenizer] if a.tokenizer else []) +
                           ["--data", data, "--task", "speed", "--out", tmp, "--epochs", "1",
                            "--batch-size", "4", "--virtual-tokens", "10"],
                           capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [float(x) for x in re.findall(r"([0-9.]+) tokens/s", p.stderr)]
    m = re.search(r"trained (\d+) steps, (\d+) tokens", p.stderr)
    if p.returncode != 0 or not rates or not m:
        print("training speed: prefixd train failed:", p.stderr[-500:])
        return
    tps = rates[-1]
    flops = 4.0 * a.params * tps  # forward 2N + activation gradients 2N per token (no weight gradients)
    print(f"training, {os.path.basename(a.model)}: {tps:.0f} tokens/s forward + backward "
          f"({m.group(2)} tokens, {m.group(1)} steps, {wall:.1f} s with loading), "
          f"~{flops * 1e-9:.1f} GFLOP/s of weight products (4 x {a.params / 1e6:.1f}M params x tokens/s);"
          f" compare with the sgemm peak printed by prefixd-bench above")


def long_prompt(n_words, seed=1):
    """A long instruction-like prompt of about n_words words (seeded)."""
    import random
    rnd = random.Random(seed)
    words = ["you", "are", "a", "helpful", "assistant", "always", "answer", "in", "short",
             "sentences", "about", "the", "story", "of", "little", "dog", "and", "his", "red",
             "ball", "never", "use", "long", "words", "be", "kind", "to", "every", "reader"]
    out = []
    while len(out) < n_words:
        out.extend(rnd.choice(words) for _ in range(rnd.randint(6, 14)))
        out[-1] += "."
    return " ".join(out)


def cmd_distill(a):
    import re
    tmp = tempfile.mkdtemp(prefix="prefixd-bench-")
    try:
        reg = os.path.join(tmp, "registry")
        os.makedirs(reg)
        prompt = long_prompt(a.prompt_tokens * 3 // 4)
        pf = os.path.join(tmp, "prompt.txt")
        with open(pf, "w") as f:
            f.write(prompt)
        t0 = time.perf_counter()
        p = subprocess.run([BIN, "train", "--model", a.model] +
                           (["--tokenizer", a.tokenizer] if a.tokenizer else []) +
                           ["--distill-prompt-file", pf, "--task", "distilled", "--out", reg,
                            "--virtual-tokens", str(a.slots), "--samples", "4",
                            "--sample-length", "8", "--epochs", "1", "--batch-size", "2"],
                           capture_output=True, text=True, timeout=3600)
        train_s = time.perf_counter() - t0
        if p.returncode != 0:
            print("distill: prefixd train failed:", p.stderr[-500:])
            return
        n_prompt = int(re.search(r"distilling a prompt of (\d+) tokens", p.stderr).group(1))
        srv = Server(tmp, a.model, a.tokenizer, reg)
        try:
            base_id = base_model(srv)
            res = {}
            for name, model, text in (("hard prompt", base_id, prompt + " One day"),
                                      ("distilled", "distilled", " One day")):
                best = None
                for i in range(3):
                    r = srv.stream({"model": model, "prompt": text, "max_tokens": a.max_tokens,
                                    "temperature": 0.8, "seed": 1 + i})
                    if r and r[0] > r[1] and r[2] > 1:
                        cur = (r[1], (r[2] - 1) / (r[0] - r[1]))  # ttft, decode rate
                        best = cur if best is None else (min(best[0], cur[0]), max(best[1], cur[1]))
                res[name] = best
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hard, dist = res["hard prompt"], res["distilled"]
    if not hard or not dist:
        print("distill: a completion failed")
        return
    print(f"distillation, {os.path.basename(a.model)}: a {n_prompt}-token prompt vs a "
          f"{a.slots}-slot distilled prefix (distill job of 4 samples x 8 tokens, 1 epoch: "
          f"{train_s:.1f} s with loading)")
    print(f"  hard prompt: time to first token {hard[0] * 1e3:.0f} ms "
          f"({n_prompt / hard[0]:.0f} prompt tok/s prefill), decode {hard[1]:.1f} tok/s")
    print(f"  distilled:   time to first token {dist[0] * 1e3:.0f} ms, decode {dist[1]:.1f} tok/s")
    print(f"  time to first token / {hard[0] / dist[0]:.1f}, decode x {dist[1] / hard[1]:.2f}, "
          f"KV per request / {(n_prompt + a.max_tokens) / (a.slots + a.max_tokens):.1f} "
          f"(prompt tokens + {a.max_tokens} generated vs slots + {a.max_tokens})")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "train", "hotload", "prefix", "registry", "trainspeed", "distill",
                 "table", "shared", "capacity", "kvdtype"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--tokenizer")
        p.add_argument("--concurrency", type=int, default=64)
        p.add_argument("--per-worker", type=int, default=2)
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--files", type=int, default=200)
        p.add_argument("--n", type=int, default=10000)
        p.add_argument("--lines", type=int, default=64)
        p.add_argument("--params", type=float, default=0.26e6)
        p.add_argument("--prompt-tokens", type=int, default=800)
        p.add_argument("--slots", type=int, default=16)
        p.add_argument("--step-tokens", type=int, default=512,
                       help="table: the server's max_step_tokens")
        p.add_argument("--kv-dtype", default="f32", choices=("f32", "f16"),
                       help="table: the server's kv_dtype")
        p.add_argument("--repeat", type=int, default=1,
                       help="table: alternated runs, the median reported")
        p.add_argument("--llama-server", metavar="BIN",
                       help="table, shared: the same load against llama.cpp's llama-server "
                            "-np 8 -t 2 on the same model file, with ratios")
    a = ap.parse_args()
    {"serve": cmd_serve, "train": cmd_train, "hotload": cmd_hotload, "prefix": cmd_prefix,
     "registry": cmd_registry, "trainspeed": cmd_trainspeed, "distill": cmd_distill,
     "table": cmd_table, "shared": cmd_shared, "capacity": cmd_capacity,
     "kvdtype": cmd_kvdtype}[a.cmd](a)


if __name__ == "__main__":
    main()
