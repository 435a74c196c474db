"""Serving benchmark (run by hand): p50/p99 latency and throughput of single-row
requests, REST and gRPC, 1 and 32 concurrent clients, with/without batching and
request logging, beside the in-process call of the same signature (the floor) and
a no-op gRPC server answering a fixed PredictResponse (the transport ceiling).

    .venv/bin/python bench/serving.py [--model-dir DIR] [--seconds 4]

(``--model-dir``: a pushed SavedModel version directory; needed when there is no
``outputs/serving_model/taxi`` from a pipeline run.)

Servers run in their own processes (``tfxops serve``); the client is one grpc.aio
channel with one coroutine per simulated client (the cheapest Python client), or
tornado's async HTTP client, in this process. Besides latency and throughput it
records each server's CPU time per request (steadier than wall-clock figures on a
shared machine), the mean batch size, and the load average. Writes
docs/bench-serving.md.
"""
import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tfxops  # noqa: F401
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


NOOP_SERVER = r"""
import asyncio, sys, grpc
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
resp = predict_pb2.PredictResponse()
resp.model_spec.name = "taxi"; resp.model_spec.version.value = 1
resp.outputs["probabilities"].dtype = 1
resp.outputs["probabilities"].tensor_shape.dim.add().size = 1
resp.outputs["probabilities"].float_val.append(0.5)
class S(prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request, context):
        return resp
async def main():
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(S(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


def start_server(serving_dir, home, batching, logging_on, extra=()):
    rest, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "tfxops.cli", "serve", "--home", home,
           "--set", f"serving_dir={serving_dir}", "--set", f"rest_port={rest}",
           "--set", f"grpc_port={grpc_port}", "--set", f"enable_batching={str(batching).lower()}",
           "--set", f"log_sample_rate={1.0 if logging_on else 0.0}"]
    for item in extra:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(rest, proc)
    wait_port(grpc_port, proc)
    time.sleep(1.0)
    return proc, rest, grpc_port


def stop(proc):
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def summarize(latencies, elapsed):
    lat = np.array(latencies) * 1e3
    return {"n": len(lat), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "rps": len(lat) / elapsed}


def cpu_seconds(pid):
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid, load):
    """Run ``load()`` (returns a summary); add the server's CPU time per request (on a
    shared machine a steadier figure than wall-clock throughput) and the load average."""
    before = cpu_seconds(pid)
    result = load()
    result["server_cpu_ms"] = 1e3 * (cpu_seconds(pid) - before) / max(1, result["n_total"])
    result["load"] = os.getloadavg()[0]
    return result


async def grpc_load(port, request, clients, seconds, max_requests=200_000):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(50):
            await stub.Predict(request, timeout=30)
        latencies, deadline = [], time.perf_counter() + seconds
        # One channel, ``clients`` coroutines each with one call in flight: the
        # cheapest Python client (threads with blocking stubs would cost more).

        async def worker():
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t = time.perf_counter()
                await stub.Predict(request, timeout=30)
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        return dict(summarize(latencies, time.perf_counter() - start), n_total=len(latencies) + 50)


async def rest_load(port, body, clients, seconds, max_requests=100_000):
    from tornado.httpclient import AsyncHTTPClient

    AsyncHTTPClient.configure(None, max_clients=clients)
    client = AsyncHTTPClient(force_instance=True)
    url = f"http://127.0.0.1:{port}/v1/models/taxi:predict"
    for _ in range(20):
        await client.fetch(url, method="POST", body=body)
    latencies, deadline = [], time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            t = time.perf_counter()
            await client.fetch(url, method="POST", body=body)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    client.close()
    return dict(summarize(latencies, time.perf_counter() - start), n_total=len(latencies) + 20)


def batch_totals(rest_port):
    """(sum, count) of the server's batch-size histogram."""
    import urllib.request

    text = urllib.request.urlopen(
        f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30).read().decode()
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in total:
            if line.startswith(f":tensorflow:serving:batching_session:processed_batch_size_{part}"):
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def batch_mean(before, after):
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else None


def floor(model_path, serialized, seconds):
    from serving.models import ModelVersion
    mv = ModelVersion("taxi", 1, model_path)
    sig = mv.signatures["serving_default"]
    feeds = {"examples": np.array(serialized[:1], dtype=object)}
    for _ in range(100):
        mv.run(sig, feeds, ("probabilities",))
    lat, deadline = [], time.perf_counter() + seconds
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline and len(lat) < 100_000:
        t = time.perf_counter()
        mv.run(sig, feeds, ("probabilities",))
        lat.append(time.perf_counter() - t)
    out = summarize(lat, time.perf_counter() - start)
    out["server_cpu_ms"] = 1e3 * (time.process_time() - cpu) / len(lat)
    out["load"] = os.getloadavg()[0]
    mv.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", help="a pushed version dir (default: newest under ./outputs)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench-serving.md"))
    args = ap.parse_args()
    from serving.client import predict_request, rest_body, serialize_rows
    from tfxops import config
    from tfxops.examples import read_csv_rows
    import orjson

    model_dir = args.model_dir
    if not model_dir:
        push = config.load({}).model_push_dir
        versions = sorted(int(v) for v in os.listdir(push) if v.isdigit())
        model_dir = str(push / str(versions[-1]))
    rows = list(read_csv_rows(str(REPO / "data" / "taxi" / "data.csv")))[:1]
    serialized = serialize_rows(rows)
    request = predict_request("taxi", serialized)
    body = orjson.dumps(rest_body(serialized))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    shutil.copytree(model_dir, tmp / "serving_model" / "taxi" / "1")
    results = []
    load_before = os.getloadavg()[0]

    print("in-process floor ...", flush=True)
    results.append(("in-process `serving_default` call (floor)", "-", 1, floor(model_dir, serialized, args.seconds)))

    noop_port = free_port()
    noop = subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(noop_port)])
    try:
        wait_port(noop_port, noop)
        for c in (1, 32):
            print(f"no-op gRPC c={c} ...", flush=True)
            results.append(("no-op gRPC server (ceiling)", "gRPC", c, measured(
                noop.pid, lambda: asyncio.run(grpc_load(noop_port, request, c, args.seconds)))))
    finally:
        stop(noop)

    for batching, logging_on in ((True, True), (False, True), (True, False), (False, False)):
        name = f"tfxops serve, batching {'on' if batching else 'off'}, logging {'on' if logging_on else 'off'}"
        proc, rest, grpc_port = start_server(str(tmp / "serving_model"), str(tmp / "home"), batching, logging_on)
        try:
            for c in (1, 32):
                print(f"{name} gRPC c={c} ...", flush=True)
                b0 = batch_totals(rest)
                results.append((name, "gRPC", c, measured(
                    proc.pid, lambda: asyncio.run(grpc_load(grpc_port, request, c, args.seconds)))))
                results[-1][3]["batch"] = batch_mean(b0, batch_totals(rest))
                if batching and logging_on:
                    print(f"{name} REST c={c} ...", flush=True)
                    b0 = batch_totals(rest)
                    results.append((name, "REST", c, measured(
                        proc.pid, lambda: asyncio.run(rest_load(rest, body, c, args.seconds)))))
                    results[-1][3]["batch"] = batch_mean(b0, batch_totals(rest))
        finally:
            stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = ["# Serving benchmark", "",
             f"Machine: {os.cpu_count()} CPUs (nproc), {cpu}; Python {platform.python_version()}; "
             f"single-row requests (one serialized tf.Example to `serving_default`), "
             f"{args.seconds:g} s per row, client and servers on the same machine "
             f"(servers in their own processes; one grpc.aio channel with one coroutine per "
             f"client / tornado async client). Run: `.venv/bin/python bench/serving.py`.", "",
             f"Load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at "
             f"the end: the machine is shared, so wall-clock rows are noisy; \"server CPU\" "
             f"(all threads of the server process, per request; for the floor, the calling "
             f"process) is steadier. \"rows/batch\": mean model-call batch size (server's "
             f"batch-size histogram) during that row.", "",
             "| setup | API | clients | p50 ms | p99 ms | requests/s | requests | server CPU ms/req "
             "| rows/batch | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, api, c, r in results:
        batch = f"{r['batch']:.1f}" if r.get("batch") else "-"
        lines.append(f"| {name} | {api} | {c} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} "
                     f"| {r['n']} | {r['server_cpu_ms']:.2f} | {batch} | {r['load']:.1f} |")
    get = {(n, a, c): r for n, a, c, r in results}
    fl = results[0][3]
    on = get[("tfxops serve, batching on, logging on", "gRPC", 32)]
    off = get[("tfxops serve, batching off, logging on", "gRPC", 32)]
    nolog = get[("tfxops serve, batching on, logging off", "gRPC", 32)]
    noop32 = get[("no-op gRPC server (ceiling)", "gRPC", 32)]
    single = min(get[("tfxops serve, batching on, logging on", "gRPC", 1)]["p50"],
                 get[("tfxops serve, batching off, logging on", "gRPC", 1)]["p50"])
    lines += ["", "Goals:", "",
              f"- gRPC single-row p50 minus in-process p50: {single - fl['p50']:.2f} ms (goal <= 1 ms)",
              f"- 32 clients, model+batching+logging vs no-op ceiling: {on['rps'] / noop32['rps']:.0%} (goal >= 80%)",
              f"- batching vs no batching (32 clients, gRPC): {on['rps'] / off['rps']:.2f}x (goal >= 3x)",
              f"- logging cost (32 clients, gRPC, batching on): {1 - on['rps'] / nolog['rps']:.0%} of throughput (goal < 10%)",
              "", "The same ratios in server CPU per request (less sensitive to other load):", "",
              f"- 32 clients, no-op / model+batching+logging: {noop32['server_cpu_ms'] / on['server_cpu_ms']:.0%}",
              f"- no batching / batching (32 clients, gRPC, logging on): {off['server_cpu_ms'] / on['server_cpu_ms']:.2f}x",
              f"- logging (32 clients, gRPC, batching on): {on['server_cpu_ms'] / nolog['server_cpu_ms'] - 1:+.0%} CPU per request",
              "", "Rows are measured minutes apart; when the load average moves during the run, "
              "ratios between rows can be off by tens of percent either way (a negative cost is "
              "noise). For an A/B of two configurations, run them interleaved and repeated."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
