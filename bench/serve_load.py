"""Load test of `bert-native serve` from a separate process: CLIENTS threads each send requests
back to back (one sequence of SEQ tokens, binary output), and it prints throughput and latency
percentiles as one JSON line.

    python bench/serve_load.py --port 8000 --model minilm --clients 8 --requests 64 --seq 128
"""
import argparse
import http.client
import json
import statistics
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--model", default="minilm")
parser.add_argument("--clients", type=int, default=1)
parser.add_argument("--requests", type=int, default=32, help="in total, over all clients")
parser.add_argument("--seq", type=int, default=128)
args = parser.parse_args()

ids = [101] + [2000 + i % 1000 for i in range(args.seq - 2)] + [102]
body = json.dumps({
    "inputs": [{"name": "input_ids", "shape": [1, args.seq], "datatype": "INT64", "data": ids}],
    "outputs": [{"name": "last_hidden_state", "parameters": {"binary_data": True}}],
})
latencies, statuses, lock = [], [], threading.Lock()


def client(count):
    connection = http.client.HTTPConnection("127.0.0.1", args.port)
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", f"/v2/models/{args.model}/infer", body,
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        with lock:
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status)


per_client = max(1, args.requests // args.clients)
threads = [threading.Thread(target=client, args=(per_client,)) for _ in range(args.clients)]
started = time.perf_counter()
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - started
latencies.sort()


def percentile(p):
    return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]


print(json.dumps({
    "clients": args.clients,
    "requests": len(latencies),
    "ok": statuses.count(200),
    "requests_per_second": len(latencies) / elapsed,
    "latency_ms_p50": percentile(50),
    "latency_ms_p99": percentile(99),
    "latency_ms_mean": 1000 * statistics.mean(latencies),
}))
