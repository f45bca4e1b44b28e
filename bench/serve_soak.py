"""Soak test of `bert-native serve`: a steady open-loop load just under saturation, mixed valid
and malformed requests, slow and abandoned clients alongside, for a long time; every SAMPLE
seconds it records the server's memory, open descriptors and threads, and the latency
percentiles and status counts of that window.

    python3 bench/serve_soak.py --bin target/release/bert-native \
        --model ~/.cache/bert-rs/models/all-minilm-l6-v2 --minutes 30 \
        --log soak.jsonl [--plot docs/soak.png]

It starts the server itself (two models from one folder: `minilm` as an encoder behind the
KServe v2 `/infer`, `embedder` as sentence embeddings behind OpenAI's `/v1/embeddings`),
measures the saturated throughput for 20 s, then sends requests at LOAD (default 0.75) of it, on
a fixed schedule: a request's latency counts from the moment it was due, so a stalled server is
not hidden by clients that stopped sending.

Every --burst-every seconds (300 by default) an overload burst of --burst-s seconds (20) adds
--burst-clients (160) connections sending valid requests back to back to one model, well past
what its bounded queue (64 here) holds: the queue must refuse the excess with 503 and nothing
else, and the steady load must be served as before once the burst is over.

Alongside the load, all the time:
- slow-loris clients trickle headers, or a body, one byte a second: the server must close them
  within its request timeout (--request-timeout-s, 10 here) plus a margin;
- abandoning clients send a request and close without reading the answer.

It prints one JSON line per sample and a verdict at the end, and exits 1 when the run fails:
- any 5xx other than the bounded queue's 503, a valid request not answered 200 or 503, or a
  malformed one answered 200;
- memory not flat after warm-up: RSS grows more than 5% (and more than 16 MiB) from the first
  tenth of the measured period to the last, by a least-squares line through the samples;
- p99 latency not steady: the last third's median p99 more than twice the first third's;
- a slow client held open past the request timeout plus 5 s;
- an overload burst that never met a 503 (the queue's bound was not reached), or whose requests
  were answered anything but 200 or 503, or lost their connection;
- the steady load's p99 not back under twice its usual within 60 s of a burst's end.

The p99 steadiness is judged on the samples away from the bursts (none overlapping a burst or
the 30 s after it, while the steady requests that came due during it are answered).

`--plot` needs matplotlib (`pip install matplotlib`).
"""
import argparse
import http.client
import json
import os
import queue
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--bin", required=True, help="the bert-native binary (a release build)")
parser.add_argument("--model", required=True, help="a MiniLM folder: config, weights, vocabulary")
parser.add_argument("--minutes", type=float, default=30.0)
parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
parser.add_argument("--warmup", type=float, default=120.0, help="seconds left out of the trend")
parser.add_argument("--load", type=float, default=0.75, help="fraction of saturated throughput")
parser.add_argument("--workers", type=int, default=32, help="client connections for the load")
parser.add_argument("--burst-every", type=float, default=300.0,
                    help="seconds between overload bursts; 0: none")
parser.add_argument("--burst-s", type=float, default=20.0, help="length of a burst, seconds")
parser.add_argument("--burst-clients", type=int, default=160,
                    help="connections sending back to back during a burst")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--log", required=True, help="JSON-lines output: samples, then the verdict")
parser.add_argument("--plot", help="PNG of RSS and latency over time")
args = parser.parse_args()

REQUEST_TIMEOUT_S = 10
SLOW_CLIENT_MARGIN_S = 5
QUEUE_SIZE = 64
# Samples this long after a burst still carry its backlog (the steady load's requests that came
# due during it): left out of the p99 trend.
BURST_SETTLE_S = 30
# The steady load's p99 must be back under twice its usual within this long after a burst.
BURST_RECOVERY_S = 60
random.seed(args.seed)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Requests: (kind, method, path, body, headers, expect_valid)

WORDS = ("the river rises in the mountains and flows to the sea through old towns where bridges "
         "of stone cross it and boats carry grain wine and timber down to the harbour").split()


def sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))


def token_ids(rng):
    """One sequence of 8 to 128 token ids, framed by [CLS] and [SEP]."""
    length = rng.randint(8, 128)
    return [101] + [rng.randint(1000, 29000) for _ in range(length - 2)] + [102]


def infer_json(rng):
    ids = token_ids(rng)
    length = len(ids)
    body = {"inputs": [{"name": "input_ids", "shape": [1, length], "datatype": "INT64",
                        "data": ids}],
            "outputs": [{"name": "last_hidden_state",
                         "parameters": {"binary_data": rng.random() < 0.5}}]}
    return ("infer_json", "/v2/models/minilm/infer", json.dumps(body).encode(), {}, True)


def infer_binary(rng):
    ids = token_ids(rng)
    length = len(ids)
    header = json.dumps({
        "inputs": [{"name": "input_ids", "shape": [1, length], "datatype": "INT64",
                    "parameters": {"binary_data_size": 8 * length}}],
        "outputs": [{"name": "last_hidden_state", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + struct.pack(f"<{length}q", *ids)
    return ("infer_binary", "/v2/models/minilm/infer", body,
            {"Inference-Header-Content-Length": str(len(header)),
             "Content-Type": "application/octet-stream"}, True)


def openai_embeddings(rng):
    texts = [sentence(rng) for _ in range(rng.randint(1, 4))]
    body = {"input": texts if len(texts) > 1 else texts[0], "model": "embedder"}
    return ("embeddings", "/v1/embeddings", json.dumps(body).encode(), {}, True)


def malformed(rng):
    """A request the server must refuse with a 4xx, without harm."""
    case = rng.randrange(9)
    if case == 0:
        return ("bad_json", "/v2/models/minilm/infer", b'{"inputs": [', {}, False)
    if case == 1:
        body = {"inputs": [{"name": "input_ids", "shape": [1, 5], "datatype": "INT64",
                            "data": [101, 2000, 102]}]}
        return ("shape_mismatch", "/v2/models/minilm/infer", json.dumps(body).encode(), {}, False)
    if case == 2:
        body = {"inputs": [{"name": "input_ids", "shape": [1 << 20, 1 << 20], "datatype": "INT64",
                            "data": [101, 2000, 102]}]}
        return ("huge_shape", "/v2/models/minilm/infer", json.dumps(body).encode(), {}, False)
    if case == 3:
        return ("unknown_model", "/v2/models/nobody/infer", b'{"inputs": []}', {}, False)
    if case == 4:
        body = {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "FP32",
                            "data": [1.5, 2.5, 3.5]}]}
        return ("wrong_type", "/v2/models/minilm/infer", json.dumps(body).encode(), {}, False)
    if case == 5:
        return ("empty_input", "/v1/embeddings",
                json.dumps({"input": [], "model": "embedder"}).encode(), {}, False)
    if case == 6:
        return ("oversized_body", "/v1/embeddings", b"x" * (3 << 20), {}, False)
    if case == 7:
        header = b'{"inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", ' \
                 b'"parameters": {"binary_data_size": 32}}]}'
        return ("truncated_binary", "/v2/models/minilm/infer", header + b"\x01\x02",
                {"Inference-Header-Content-Length": str(len(header))}, False)
    ids = [101] + [2000] * 600 + [102]
    body = {"inputs": [{"name": "input_ids", "shape": [1, len(ids)], "datatype": "INT64",
                        "data": ids}]}
    return ("too_long", "/v2/models/minilm/infer", json.dumps(body).encode(), {}, False)


def any_request(rng):
    draw = rng.random()
    if draw < 0.40:
        return infer_json(rng)
    if draw < 0.55:
        return infer_binary(rng)
    if draw < 0.85:
        return openai_embeddings(rng)
    return malformed(rng)


# ---------------------------------------------------------------------------------------------
# Bookkeeping shared by the client threads

class Window:
    """What happened since the last sample."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.latencies = []
        self.statuses = {}
        self.violations = []
        self.slow_closed = []

    def take(self):
        with self.lock:
            taken = (self.latencies, self.statuses, self.violations, self.slow_closed)
            self.reset()
        return taken


window = Window()
stop = threading.Event()
measuring = threading.Event()
bursting = threading.Event()
# One record per burst begun: its window and the statuses its requests got (under window.lock).
burst_log = []


def send(connection, request):
    kind, path, body, headers, valid = request
    connection.request("POST", path, body, {"Content-Type": "application/json", **headers})
    response = connection.getresponse()
    response.read()
    return response.status


def judge(request, status, latency):
    kind, _, _, _, valid = request
    problem = None
    if status >= 500 and status != 503:
        problem = f"{kind}: {status}"
    elif valid and status not in (200, 503):
        problem = f"{kind} (valid): {status}"
    elif not valid and not 400 <= status < 500:
        problem = f"{kind} (malformed): {status}"
    with window.lock:
        window.statuses[status] = window.statuses.get(status, 0) + 1
        if valid and status == 200:
            window.latencies.append(latency)
        if problem:
            window.violations.append(problem)


def load_worker(tasks, port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        task = tasks.get()
        if task is None:
            return
        due, request = task
        try:
            status = send(connection, request)
        except (OSError, http.client.HTTPException) as e:
            # The server may close a connection after a refused body (413): open a new one.
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if request[4]:
                with window.lock:
                    window.violations.append(f"{request[0]}: {type(e).__name__}: {e}")
            continue
        judge(request, status, time.perf_counter() - due)


def burst_client(port, seed):
    """While a burst is on, sends valid requests to one model back to back, on a connection
    opened for that burst: the server closes the last burst's, idle since, after the request
    timeout (as any kept-alive connection left idle), and a stale connection is no fault."""
    rng = random.Random(seed)
    connection, burst = None, None
    while not stop.is_set():
        if not bursting.wait(timeout=0.5):
            continue
        if burst != len(burst_log):
            if connection:
                connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            burst = len(burst_log)
        request = infer_json(rng)
        try:
            status = send(connection, request)
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with window.lock:
                window.violations.append(f"burst: {type(e).__name__}: {e}")
            continue
        with window.lock:
            counts = burst_log[-1]["statuses"]
            counts[status] = counts.get(status, 0) + 1
            if status not in (200, 503):
                window.violations.append(f"burst (valid): {status}")


def saturated_throughput(port, seconds=20.0, clients=8):
    """Requests per second with `clients` sending valid requests back to back."""
    done = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(seed):
        rng = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            request = any_request(rng)
            while not request[4]:
                request = any_request(rng)
            send(connection, request)
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=client, args=(args.seed + 1000 + i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / (time.perf_counter() - started)


def slow_loris(port, trickle_body, seed):
    """Opens a connection, sends the start of a request, then trickles the rest one byte a
    second (more headers, or a body that never ends) until the server closes it; records how
    long that took."""
    rng = random.Random(seed)
    while not stop.is_set():
        if trickle_body:
            start = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        else:
            start = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: "
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(1.0)
        started = time.perf_counter()
        closed_after = None
        try:
            sock.sendall(start)
            while not stop.is_set() and time.perf_counter() - started < 120:
                sock.sendall(b"a")
                try:
                    sock.recv(4096)  # an answer (408) or the end of the stream: closed
                    closed_after = time.perf_counter() - started
                    break
                except socket.timeout:
                    continue
        except OSError:
            closed_after = time.perf_counter() - started
        sock.close()
        if measuring.is_set() and not stop.is_set():
            with window.lock:
                if closed_after is None:
                    window.violations.append("slow client never closed (120 s)")
                else:
                    window.slow_closed.append(round(closed_after, 2))
                    if closed_after > REQUEST_TIMEOUT_S + SLOW_CLIENT_MARGIN_S:
                        window.violations.append(f"slow client held {closed_after:.1f} s")
        time.sleep(rng.random())


def abandoner(port, seed):
    """Sends valid requests and closes each connection before reading the answer."""
    rng = random.Random(seed)
    while not stop.is_set():
        _, path, body, headers, _ = openai_embeddings(rng)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"{head}Content-Length: {len(body)}\r\n\r\n").encode() + body
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(request)
        except OSError as e:
            with window.lock:
                window.violations.append(f"abandoner could not connect: {e}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# The server and its footprint

def process_footprint(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def start_server(port, repository):
    for name, task in (("minilm", "encoder"), ("embedder", "sentence-embeddings")):
        folder = os.path.join(repository, name)
        os.makedirs(folder)
        for file in os.listdir(args.model):
            os.symlink(os.path.abspath(os.path.join(args.model, file)),
                       os.path.join(folder, file))
        with open(os.path.join(folder, "model.json"), "w") as settings:
            json.dump({"task": task}, settings)
    server = subprocess.Popen(
        [args.bin, "serve", "--model-repository", repository, "--http-port", str(port),
         "--max-queue-size", str(QUEUE_SIZE), "--request-timeout-s", str(REQUEST_TIMEOUT_S)],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(repository, "server.log"), "w"))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    with open(os.path.join(repository, "server.log")) as log:
        sys.exit(f"the server did not become ready within 120 s:\n{log.read()}")


def percentile(values, p):
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(p / 100 * len(values)))] if values else None


def slope(xs, ys):
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else 0.0


def verdict(samples, totals):
    measured = [s for s in samples if s["t_s"] >= args.warmup]
    steady = [s for s in measured if not s["burst"]]
    times = [s["t_s"] for s in measured]
    rss = [s["rss_mib"] for s in measured]
    rate = slope(times, rss)  # MiB per second
    span = times[-1] - times[0]
    tenth = span / 10
    start_fit = statistics.mean(rss) + rate * (times[0] + tenth / 2 - statistics.mean(times))
    end_fit = start_fit + rate * (span - tenth)
    growth = end_fit - start_fit
    thirds = len(steady) // 3
    p99_first = statistics.median(s["p99_ms"] for s in steady[:thirds] if s["p99_ms"])
    p99_last = statistics.median(s["p99_ms"] for s in steady[-thirds:] if s["p99_ms"])
    slow = [t for s in samples for t in s["slow_closed_s"]]
    failures = []
    if totals["violations"]:
        failures.append(f"{len(totals['violations'])} wrong answers, e.g. "
                        f"{totals['violations'][:3]}")
    if growth > max(16.0, 0.05 * start_fit):
        failures.append(f"RSS grew {growth:.1f} MiB after warm-up")
    if p99_last > 2 * p99_first:
        failures.append(f"p99 rose from {p99_first:.1f} to {p99_last:.1f} ms")
    for number, burst in enumerate(totals["bursts"], 1):
        if not burst["statuses"].get(503):
            failures.append(f"burst {number} met no 503: the queue's bound was not reached")
        end = burst["window_s"][1]
        recovered = next((s["t_s"] - end for s in samples
                          if s["t_s"] > end and s["p99_ms"] and s["p99_ms"] <= 2 * p99_first),
                         None)
        burst["p99_recovered_after_s"] = recovered
        if recovered is None or recovered > BURST_RECOVERY_S:
            failures.append(f"burst {number}: the steady load's p99 not back under twice its "
                            f"usual {BURST_RECOVERY_S} s after")
    return {
        "verdict": "pass" if not failures else "fail",
        "failures": failures,
        "minutes": args.minutes,
        "offered_rps": totals["offered_rps"],
        "saturated_rps": totals["saturated_rps"],
        "statuses": totals["statuses"],
        "rss_mib_after_warmup": {"min": min(rss), "max": max(rss), "fitted_growth": growth,
                                 "slope_mib_per_hour": rate * 3600},
        "open_fds": {"min": min(s["open_fds"] for s in measured),
                     "max": max(s["open_fds"] for s in measured)},
        "p99_ms": {"first_third_median": p99_first, "last_third_median": p99_last},
        "p50_ms_median": statistics.median(s["p50_ms"] for s in steady if s["p50_ms"]),
        "bursts": totals["bursts"],
        "slow_clients_closed": len(slow),
        "slow_client_close_s": {"min": min(slow), "max": max(slow)} if slow else None,
    }


def plot(samples, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    minutes = [s["t_s"] / 60 for s in samples]
    figure, (memory, latency) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    memory.plot(minutes, [s["rss_mib"] for s in samples], color="tab:blue")
    memory.set_ylabel("server RSS (MiB)")
    memory.set_ylim(bottom=0)
    memory.axvline(args.warmup / 60, color="grey", linestyle=":", label="end of warm-up")
    memory.legend(loc="lower right")
    latency.plot(minutes, [s["p50_ms"] for s in samples], label="p50", color="tab:green")
    latency.plot(minutes, [s["p99_ms"] for s in samples], label="p99", color="tab:red")
    latency.set_ylabel("latency of valid requests (ms)")
    for burst in burst_log:
        for axis in (memory, latency):
            start, end = burst["window_s"]
            axis.axvspan(start / 60, end / 60, color="tab:orange", alpha=0.25, lw=0)
    latency.set_xlabel("minutes (orange: overload bursts)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper right")
    figure.suptitle(f"bert-native serve soak: {samples[-1]['offered_rps']:.1f} requests/s "
                    f"offered, mixed valid and malformed, slow clients alongside")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    port = free_port()
    repository = tempfile.mkdtemp(prefix="bert-soak-")
    server = start_server(port, repository)
    try:
        saturated = saturated_throughput(port)
        offered = args.load * saturated
        print(json.dumps({"saturated_rps": saturated, "offered_rps": offered}), flush=True)
        tasks = queue.Queue(maxsize=10_000)
        threads = [threading.Thread(target=load_worker, args=(tasks, port), daemon=True)
                   for _ in range(args.workers)]
        threads += [threading.Thread(target=slow_loris, args=(port, body, args.seed + i),
                                     daemon=True)
                    for i, body in enumerate((False, False, True, True))]
        threads.append(threading.Thread(target=abandoner, args=(port, args.seed + 9),
                                        daemon=True))
        if args.burst_every > 0:
            threads += [threading.Thread(target=burst_client, args=(port, args.seed + 2000 + i),
                                         daemon=True)
                        for i in range(args.burst_clients)]
        for thread in threads:
            thread.start()
        measuring.set()
        rng = random.Random(args.seed)
        started = time.perf_counter()
        end = started + 60 * args.minutes
        next_sample = started + args.sample
        due = started
        samples = []
        totals = {"statuses": {}, "violations": [], "offered_rps": offered,
                  "saturated_rps": saturated, "bursts": burst_log}
        # Burst k runs over [k * every, k * every + length) seconds, while it ends before `end`.
        bursts = []
        if args.burst_every > 0:
            k = 1
            while k * args.burst_every + args.burst_s < 60 * args.minutes:
                bursts.append((k * args.burst_every, k * args.burst_every + args.burst_s))
                k += 1
        last_sample_s = 0.0
        with open(args.log, "w") as log:
            while due < end:
                due += rng.expovariate(offered)
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                tasks.put((due, any_request(rng)))
                elapsed = time.perf_counter() - started
                on = next((b for b in bursts if b[0] <= elapsed < b[1]), None)
                if on and not bursting.is_set():
                    with window.lock:
                        burst_log.append({"window_s": list(on), "statuses": {}})
                    bursting.set()
                elif not on and bursting.is_set():
                    bursting.clear()
                if time.perf_counter() >= next_sample:
                    next_sample += args.sample
                    latencies, statuses, violations, slow_closed = window.take()
                    now_s = time.perf_counter() - started
                    touching = [b for b in bursts
                                if b[0] < now_s and last_sample_s < b[1] + BURST_SETTLE_S]
                    last_sample_s = now_s
                    sample = {"t_s": round(now_s, 1),
                              "burst": bool(touching),
                              **process_footprint(server.pid),
                              "p50_ms": percentile(latencies, 50),
                              "p99_ms": percentile(latencies, 99),
                              "answered": len(latencies), "statuses": statuses,
                              "violations": violations, "slow_closed_s": slow_closed,
                              "offered_rps": offered, "queued_in_client": tasks.qsize()}
                    samples.append(sample)
                    for status, count in statuses.items():
                        totals["statuses"][status] = totals["statuses"].get(status, 0) + count
                    totals["violations"] += violations
                    log.write(json.dumps(sample) + "\n")
                    log.flush()
                    print(json.dumps(sample), flush=True)
            stop.set()
            result = verdict(samples, totals)
            log.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)
        if args.plot:
            plot(samples, args.plot)
        return 0 if result["verdict"] == "pass" else 1
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        subprocess.run(["rm", "-rf", repository])


if __name__ == "__main__":
    sys.exit(main())
