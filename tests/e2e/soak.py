#!/usr/bin/python3
"""Bounded soak of the real `prefixd serve` on 127.0.0.1 (nothing else is
contacted): for --seconds, a mixed load of completions (streamed and not,
several tasks, random lengths, some streams dropped by the client midway,
bursts past the queue limit), prefix uploads and deletes (from_prompt and
file uploads), and fine-tuning jobs trained one after another. Every few
seconds the server's RSS (/proc/<pid>/status VmRSS) and open file
descriptors (/proc/<pid>/fd) are sampled.

    /usr/bin/python3 tests/e2e/soak.py --seconds 600     (make soak)

Pass criteria (exit status 0 when all hold, 1 otherwise):
  - no unexpected status: no 5xx at all, and no 4xx other than the expected
    ones (429 when the queue is full, counted separately; 404 for the
    tasks this soak deletes and re-creates; 409 concurrent_delete for a PUT
    that two prefix workers raced with a DELETE of the same task); no
    connection error; every
    response well formed (JSON choices, SSE ending in [DONE]);
  - no job failed, and the training jobs made progress;
  - RSS flat after warm-up: the samples after the warm-up are split into
    two halves in time; max(second half) <= max(first half) * 1.10 + 8 MiB.
    Maxima of halves rather than end points: RSS under this load moves
    with the number of live sequences and the training job's buffers, so
    single samples are noisy, while a leak raises every later maximum.
    Not enforced when the binary is built with AddressSanitizer (its
    quarantine holds freed memory by design); still reported;
  - fds flat: the load is paused (every client idle) at the end of the
    warm-up and at the end, and the fd count of the idle server at the end
    is at most the idle count after warm-up + 4;
  - the server exits 0 on SIGTERM at the end.

Every loop is bounded by the deadline and by an iteration cap, every request
by a timeout; the whole run stops by itself after --seconds plus at most a
minute or two of draining."""
import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import BIN, ROOT  # noqa: E402  (the binary: PREFIXD_BIN or build/prefixd)
from server_util import TASKS, Server, make_registry  # noqa: E402

BASE = "stories260K"
DATA = os.path.join(ROOT, "tests", "data", "train")
BOUNDARY = "----prefixdSoakBoundary1c0ffee"
MAX_ITERS = 1_000_000          # per worker loop, on top of the deadline
REQUEST_TIMEOUT = 60
MIB = 1024 * 1024
RSS_FACTOR, RSS_SLACK_MIB, FD_SLACK = 1.10, 8, 4

STATIC_TASKS = [t for t, _ in TASKS[:4]]
DYNAMIC_TASKS = ["soak-a", "soak-b", "soak-c"]  # uploaded and deleted over and over
PROMPTS = ["Once upon a time", "One day", "Tom and Sue", "The little dog", "She was happy",
           "It was a sunny day and", "Lily wanted to"]
PREFIX_TEXTS = ["The cat sat on the mat.", "Ben had a big red ball.",
                "Once upon a time there was a little girl named Lily. She liked to play.",
                "The sun was hot and the sky was blue. The birds sang in the trees."]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()      # (kind, status) -> n
        self.errors = []             # unexpected outcomes, (kind, what)
        self.jobs = Counter()        # final status -> n
        self.job_steps = 0

    def count(self, kind, status):
        with self.lock:
            self.counts[(kind, status)] += 1

    def error(self, kind, what):
        with self.lock:
            self.errors.append((kind, str(what)[:300]))


class Gate:
    """Lets the controller pause the load: workers call enter()/leave() around each
    unit of work; pause() waits until none is inside."""

    def __init__(self):
        self.cv = threading.Condition()
        self.open = True
        self.inside = 0

    def enter(self, deadline):
        with self.cv:
            while not self.open and time.time() < deadline:
                self.cv.wait(0.2)
            self.inside += 1

    def leave(self):
        with self.cv:
            self.inside -= 1
            self.cv.notify_all()

    def pause(self, timeout):
        with self.cv:
            self.open = False
            end = time.time() + timeout
            while self.inside and time.time() < end:
                self.cv.wait(0.2)
            return self.inside == 0

    def resume(self):
        with self.cv:
            self.open = True
            self.cv.notify_all()


def request(port, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT):
    """(status, body bytes) on a fresh connection to 127.0.0.1."""
    h = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def multipart(filename, data):
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"fine-tune\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def concurrent_delete(status, body):
    """A PUT answered 409 because another worker's DELETE of the task came right after."""
    return status == 409 and b"concurrent_delete" in body


def sample(pid):
    """(RSS in bytes, open fds) of pid."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# ---- the load ------------------------------------------------------------------------------

class Soak:
    def __init__(self, server, seconds, seed, warmup, every, prefix_files):
        self.s = server
        self.port = server.port
        self.pid = server.proc.pid
        self.start = time.time()
        self.deadline = self.start + seconds
        self.warmup_end = self.start + warmup
        self.every = every
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.gate = Gate()
        self.stop = threading.Event()
        self.samples = []            # (t since start, rss, fds)
        self.quiet = {}              # "warm" / "end" -> (rss, fds) with the load paused
        self.prefix_files = prefix_files

    def running(self):
        return not self.stop.is_set() and time.time() < self.deadline

    def unit(self):
        """A context manager for one unit of work (pausable)."""
        soak = self

        class U:
            def __enter__(self):
                soak.gate.enter(soak.deadline)

            def __exit__(self, *exc):
                soak.gate.leave()
        return U()

    # -- completions
    def completion(self, rng, task=None, max_tokens=None, kind=None):
        task = task or rng.choice(STATIC_TASKS * 3 + [BASE, "soak-trained"] + DYNAMIC_TASKS)
        params = {"model": task, "prompt": rng.choice(PROMPTS),
                  "max_tokens": max_tokens or rng.randint(1, 64),
                  "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 1 << 30)}
        if rng.random() < 0.2:
            params["n"] = 2
        stream = rng.random() < 0.4
        if stream:
            params["stream"] = True
        kind = kind or ("stream" if stream else "complete")
        may_404 = task not in STATIC_TASKS and task != BASE
        try:
            st, body = request(self.port, "POST", "/v1/completions", params)
        except (OSError, http.client.HTTPException) as e:
            self.stats.error(kind, f"{task}: {e!r}")
            return
        self.stats.count(kind, st)
        if st == 200:
            try:
                if stream:
                    text = body.decode()
                    assert text.endswith("data: [DONE]\n\n"), text[-100:]
                    for ev in text.split("\n\n")[:-2]:
                        assert ev.startswith("data: "), ev[:100]
                        json.loads(ev[6:])
                else:
                    j = json.loads(body)
                    assert len(j["choices"]) == params.get("n", 1), j
            except (AssertionError, ValueError, KeyError) as e:
                self.stats.error(kind, f"malformed: {e!r}")
        elif st == 429 or (st == 404 and may_404):
            pass
        else:
            self.stats.error(kind, f"{task}: {st} {body[:200]!r}")

    def dropped_stream(self, rng):
        """A streamed completion the client abandons after the first event."""
        task = rng.choice(STATIC_TASKS + [BASE])
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            c.request("POST", "/v1/completions",
                      body=json.dumps({"model": task, "prompt": rng.choice(PROMPTS),
                                       "max_tokens": 200, "stream": True}).encode(),
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            self.stats.count("stream_dropped", r.status)
            if r.status == 200:
                r.readline()  # part of the first event, then hang up
            elif r.status != 429:
                self.stats.error("stream_dropped", f"{r.status} {r.read()[:200]!r}")
        except (OSError, http.client.HTTPException) as e:
            self.stats.error("stream_dropped", repr(e))
        finally:
            c.close()

    def completions_worker(self, seed):
        rng = random.Random(seed)
        for _ in range(MAX_ITERS):
            if not self.running():
                break
            with self.unit():
                if rng.random() < 0.05:
                    self.dropped_stream(rng)
                else:
                    self.completion(rng)
            time.sleep(rng.uniform(0, 0.03))

    def burst_worker(self, seed):
        """Every few seconds, a burst of short requests past the queue limit."""
        rng = random.Random(seed)
        for _ in range(MAX_ITERS):
            if not self.running():
                break
            time.sleep(rng.uniform(3, 8))
            if not self.running():
                break
            with self.unit():
                ts = [threading.Thread(target=self.completion,
                                       args=(random.Random(rng.random()),),
                                       kwargs={"task": rng.choice(STATIC_TASKS),
                                               "max_tokens": rng.randint(8, 32),
                                               "kind": "burst"})
                      for _ in range(16)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join(REQUEST_TIMEOUT + 5)

    # -- prefixes
    def prefix_worker(self, seed):
        rng = random.Random(seed)
        for _ in range(MAX_ITERS):
            if not self.running():
                break
            task = rng.choice(DYNAMIC_TASKS)
            with self.unit():
                op = rng.random()
                try:
                    if op < 0.35:
                        kind = "prefix_put_prompt"
                        st, body = request(self.port, "PUT", f"/v1/prefixes/{task}",
                                           {"from_prompt": rng.choice(PREFIX_TEXTS)})
                        ok = st in (200, 201, 429) or concurrent_delete(st, body)
                    elif op < 0.7:
                        kind = "prefix_put_file"
                        st, body = request(self.port, "PUT", f"/v1/prefixes/{task}",
                                           rng.choice(self.prefix_files),
                                           {"Content-Type": "application/octet-stream"})
                        ok = st in (200, 201) or concurrent_delete(st, body)
                    elif op < 0.9:
                        kind = "prefix_delete"
                        st, body = request(self.port, "DELETE", f"/v1/prefixes/{task}")
                        ok = st in (200, 404)
                    else:
                        kind = "prefix_get"
                        st, body = request(self.port, "GET", "/v1/prefixes")
                        ok = st == 200 and json.loads(body)["object"] == "list"
                except (OSError, http.client.HTTPException, ValueError) as e:
                    self.stats.error("prefix", repr(e))
                    continue
                self.stats.count(kind, st)
                if not ok:
                    self.stats.error(kind, f"{task}: {st} {body[:200]!r}")
            time.sleep(rng.uniform(0.05, 0.3))

    # -- training
    def training_worker(self, seed):
        rng = random.Random(seed)
        with open(os.path.join(DATA, "dragon.train.jsonl"), "rb") as f:
            data = f.read()

        def call(kind, method, path, body=None, headers=None, want=(200,)):
            with self.unit():
                try:
                    st, raw = request(self.port, method, path, body, headers)
                except (OSError, http.client.HTTPException) as e:
                    self.stats.error(kind, repr(e))
                    return None
            self.stats.count(kind, st)
            if st not in want:
                self.stats.error(kind, f"{st} {raw[:200]!r}")
                return None
            return json.loads(raw)

        for _ in range(MAX_ITERS):
            if not self.running():
                break
            body, ctype = multipart("dragon.train.jsonl", data)
            f = call("file_upload", "POST", "/v1/files", body, {"Content-Type": ctype})
            if not f:
                break
            job = call("job_create", "POST", "/v1/fine_tuning/jobs",
                       {"model": BASE, "training_file": f["id"], "suffix": "soak-trained",
                        "seed": rng.randint(0, 1000),
                        "method": {"type": "prefix", "prefix": {"hyperparameters": {
                            "n_epochs": 1, "num_virtual_tokens": rng.choice([4, 8, 10])}}}})
            if not job:
                break
            jid, status = job["id"], job["status"]
            for _ in range(MAX_ITERS):
                if status in ("succeeded", "failed", "cancelled"):
                    break
                if not self.running():  # out of time: cancel it
                    call("job_cancel", "POST", f"/v1/fine_tuning/jobs/{jid}/cancel")
                    end = time.time() + 60
                    while time.time() < end and status not in ("failed", "succeeded",
                                                                "cancelled"):
                        j = call("job_get", "GET", f"/v1/fine_tuning/jobs/{jid}")
                        status = j["status"] if j else "unknown"
                        time.sleep(0.2)
                    break
                time.sleep(0.5)
                j = call("job_get", "GET", f"/v1/fine_tuning/jobs/{jid}")
                if not j:
                    status = "unknown"
                    break
                status = j["status"]
            ev = call("job_events", "GET", f"/v1/fine_tuning/jobs/{jid}/events?limit=5")
            steps = [e["data"]["step"] for e in (ev or {}).get("data", [])
                     if e["type"] == "metrics" and e.get("data") and "step" in e["data"]]
            with self.stats.lock:
                self.stats.jobs[status] += 1
                self.stats.job_steps += max(steps, default=0)
            if status not in ("succeeded", "cancelled"):
                self.stats.error("job", f"{jid} ended {status}")
                break
            call("file_delete", "DELETE", f"/v1/files/{f['id']}")

    # -- sampling and control
    def sampler(self):
        paused_warm = False
        for _ in range(MAX_ITERS):
            now = time.time()
            if now >= self.deadline or self.stop.is_set():
                break
            if not paused_warm and now >= self.warmup_end:
                paused_warm = True
                self.quiet["warm"] = self.quiet_sample()
            try:
                rss, fds = sample(self.pid)
            except OSError as e:
                self.stats.error("sampler", f"server gone: {e!r}")
                self.stop.set()
                break
            self.samples.append((now - self.start, rss, fds))
            if self.s.proc.poll() is not None:
                self.stats.error("server", f"exited {self.s.proc.returncode}")
                self.stop.set()
                break
            time.sleep(max(0.0, min(self.every, self.deadline - time.time())))

    def quiet_sample(self):
        """Pauses the load, samples the idle server, resumes."""
        idle = self.gate.pause(REQUEST_TIMEOUT + 10)
        time.sleep(0.5)  # let the server close what the last requests used
        got = sample(self.pid)
        self.gate.resume()
        if not idle:
            self.stats.error("sampler", "the load did not pause")
        return got

    def run(self, n_completion_workers=3):
        workers = [threading.Thread(target=self.completions_worker, args=(self.rng.random(),))
                   for _ in range(n_completion_workers)]
        workers += [threading.Thread(target=self.burst_worker, args=(self.rng.random(),)),
                    threading.Thread(target=self.prefix_worker, args=(self.rng.random(),)),
                    threading.Thread(target=self.prefix_worker, args=(self.rng.random(),)),
                    threading.Thread(target=self.training_worker, args=(self.rng.random(),))]
        for w in workers:
            w.daemon = True
            w.start()
        self.sampler()
        for w in workers:
            w.join(REQUEST_TIMEOUT * 2 + 30)
            if w.is_alive():
                self.stats.error("soak", f"worker {w.name} did not stop")
        if self.s.proc.poll() is None:
            self.quiet["end"] = self.quiet_sample()
            self.samples.append((time.time() - self.start, *self.quiet["end"]))


# ---- verdict ---------------------------------------------------------------------------------

def is_asan(path):
    try:
        with open(path, "rb") as f:
            return b"AddressSanitizer" in f.read()
    except OSError:
        return False


def verdict(soak, warmup, asan):
    st = soak.stats
    failures = list(f"{k}: {w}" for k, w in st.errors)
    fives = {k: n for k, n in st.counts.items() if k[1] >= 500}
    if fives:
        failures.append(f"5xx answers: {fives}")
    if st.jobs.get("failed"):
        failures.append(f"{st.jobs['failed']} training job(s) failed")
    if st.job_steps == 0:
        failures.append("no training step was observed")

    after = [(t, r, f) for t, r, f in soak.samples if t >= warmup]
    rss = {}
    if len(after) >= 4:
        mid = after[0][0] + (after[-1][0] - after[0][0]) / 2
        first = [r for t, r, _ in after if t <= mid]
        second = [r for t, r, _ in after if t > mid]
        rss = {"start": after[0][1], "end": after[-1][1], "max": max(r for _, r, _ in after),
               "max_first_half": max(first), "max_second_half": max(second),
               "limit": int(max(first) * RSS_FACTOR + RSS_SLACK_MIB * MIB)}
        if rss["max_second_half"] > rss["limit"]:
            msg = (f"RSS grew: max of the second half {rss['max_second_half'] / MIB:.1f} MiB > "
                   f"{rss['limit'] / MIB:.1f} MiB (first half max x {RSS_FACTOR} + "
                   f"{RSS_SLACK_MIB} MiB)")
            if asan:
                print(f"note (AddressSanitizer build, not enforced): {msg}")
            else:
                failures.append(msg)
    else:
        failures.append(f"only {len(after)} samples after the warm-up: run longer")

    fds = {}
    if "warm" in soak.quiet and "end" in soak.quiet:
        fds = {"start": soak.quiet["warm"][1], "end": soak.quiet["end"][1],
               "max": max(f for _, _, f in soak.samples)}
        if fds["end"] > fds["start"] + FD_SLACK:
            failures.append(f"open fds grew: {fds['start']} idle after warm-up, {fds['end']} "
                            f"idle at the end (slack {FD_SLACK})")
    else:
        failures.append("no idle fd sample after warm-up and at the end")
    return failures, rss, fds


def report(soak, seconds, warmup, failures, rss, fds, exit_code):
    st = soak.stats
    total = sum(st.counts.values())
    print(f"\nprefixd soak: {seconds:.0f} s (warm-up {warmup:.0f} s), pid {soak.pid}, "
          f"{len(soak.samples)} samples")
    print(f"requests: {total} in all, {sum(n for (k, s), n in st.counts.items() if s == 429)} "
          f"answered 429 (expected under load)")
    kinds = sorted({k for k, _ in st.counts})
    for k in kinds:
        by = ", ".join(f"{s}: {n}" for (kk, s), n in sorted(st.counts.items()) if kk == k)
        print(f"  {k:18s} {by}")
    print(f"training jobs: {dict(st.jobs)}, steps observed {st.job_steps}")
    print(f"unexpected: {len(st.errors)} errors, "
          f"{sum(n for (_, s), n in st.counts.items() if s >= 500)} 5xx")
    for k, w in st.errors[:20]:
        print(f"  {k}: {w}")
    if rss:
        print(f"RSS after warm-up: start {rss['start'] / MIB:.1f} MiB, end {rss['end'] / MIB:.1f} "
              f"MiB, max {rss['max'] / MIB:.1f} MiB (first half max "
              f"{rss['max_first_half'] / MIB:.1f}, second half max "
              f"{rss['max_second_half'] / MIB:.1f}, limit {rss['limit'] / MIB:.1f})")
    step = max(1, len(soak.samples) // 30)
    print("samples (s: RSS MiB / fds): " + ", ".join(
        f"{t:.0f}: {r / MIB:.1f}/{f}" for t, r, f in soak.samples[::step]))
    if "warm" in soak.quiet and "end" in soak.quiet:
        print(f"RSS with the clients paused (a training job may still run): after warm-up "
              f"{soak.quiet['warm'][0] / MIB:.1f} MiB, end {soak.quiet['end'][0] / MIB:.1f} MiB")
    if fds:
        print(f"open fds (idle server): start {fds['start']}, end {fds['end']}; "
              f"max under load {fds['max']}")
    print(f"server exit status on SIGTERM: {exit_code}")
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before RSS/fds count (default: 25%% of the run, 10..120)")
    ap.add_argument("--sample-every", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args(argv)
    seconds = max(10.0, min(args.seconds, 24 * 3600))
    warmup = args.warmup if args.warmup is not None else min(120.0, max(10.0, seconds * 0.25))

    tmp = tempfile.mkdtemp(prefix="prefixd-soak-")
    registry = make_registry(os.path.join(tmp, "registry"), TASKS[:4])
    srcdir = os.path.join(tmp, "src")
    make_registry(srcdir, [(f"f{i}", t) for i, t in enumerate(PREFIX_TEXTS)])
    prefix_files = []
    for i in range(len(PREFIX_TEXTS)):
        with open(os.path.join(srcdir, f"f{i}.safetensors"), "rb") as f:
            prefix_files.append(f.read())
    cfg = {"max_seqs": 8, "queue_limit": 8, "checkpoint_every": 5, "train_metrics_every": 5,
           "registry_rescan_ms": 1000, "log_level": "warn", "max_body_bytes": 4 * MIB}
    server = Server(tmp, registry, config=cfg)
    print(f"prefixd soak: {BIN} on {server.url} for {seconds:.0f} s, temp dir {tmp}", flush=True)
    soak = Soak(server, seconds, args.seed, warmup, args.sample_every, prefix_files)
    exit_code = None
    try:
        soak.run()
    finally:
        try:
            server.stop(timeout=60)
            exit_code = 0
        except AssertionError as e:
            exit_code = server.proc.returncode
            soak.stats.error("server", f"bad exit: {str(e)[-2000:]}")
    failures, rss, fds = verdict(soak, warmup, is_asan(BIN))
    report(soak, seconds, warmup, failures, rss, fds, exit_code)
    if failures:
        print(f"server log: {server.log_path}")
    elif not args.keep:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
