"""Serving benchmark (run by hand: ``make bench-serving``): p50/p99 latency, throughput
and server CPU per request of tfxops serve against its peers, on the same SavedModel
with the same client, interleaved in one run.

    .venv/bin/python bench/serving.py [--model-dir DIR] [--seconds 3] [--rounds 5] [--no-peers]

(``--model-dir``: a pushed SavedModel version directory; needed when there is no
``outputs/serving_model/taxi`` from a pipeline run.)

Rows: the in-process call of the signature (the floor), with 1 and 32 rows; a no-op
grpc.aio server answering a fixed PredictResponse on the same event loop as tfxops
serve (the Python transport ceiling); ``tfxops serve`` with batching and request
logging on/off (TF Serving's REST and gRPC APIs, and the V2 protocol when the server
has it); and the peers (bench/peers/): FastAPI + uvicorn wrapping the SavedModel with
TF Serving's REST shape, and KServe's Python model server (V1 REST, V2 REST and V2
gRPC), both in a virtualenv of their own built under ``~/.cache/tfxops-bench/``.

Every server runs in its own process, all started at once and measured in turns:
every round measures every row once, so a slow minute on a shared machine hits all
rows of that round alike. Each cell is a row's median over the rounds; each goal
is computed within each round, and its median and range over the rounds reported.
The client is this process: one grpc.aio channel with one coroutine per simulated
client, sending the same pre-serialized request bytes to every gRPC server (so
every server costs the client the same), or tornado's async HTTP client. Writes its
section at the top of docs/bench-serving.md (between the ``bench/serving.py``
markers; the hand-written sections below stay).
"""
import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from core.env import set_process_environment

set_process_environment()
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import features as F  # noqa: E402
from serving.client import wait_listening  # noqa: E402
from core.ports import free_port  # noqa: E402


NOOP_SERVER = r"""
import asyncio, sys, grpc
from core import features as F
from serving import busy_poll
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
resp = predict_pb2.PredictResponse()
resp.model_spec.name = "taxi"; resp.model_spec.version.value = 1
resp.outputs[F.PREDICTION_KEY].dtype = 1
resp.outputs[F.PREDICTION_KEY].tensor_shape.dim.add().size = 1
resp.outputs[F.PREDICTION_KEY].float_val.append(0.5)
class S(prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request, context):
        return resp
async def main():
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(S(), server)
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
busy_poll.run(main(), int(sys.argv[2]))   # the same event loop as tfxops serve
"""
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
JSON = {"Content-Type": "application/json"}


def start_server(serving_dir, home, batching, logging_on, extra=()):
    rest, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "tfxops.cli", "serve", "--home", home,
           "--set", f"serving_dir={serving_dir}", "--set", f"rest_port={rest}",
           "--set", f"grpc_port={grpc_port}", "--set", f"enable_batching={str(batching).lower()}",
           "--set", f"log_sample_rate={1.0 if logging_on else 0.0}"]
    for item in extra:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def cpu_seconds(pid, thread=None):
    """User + system CPU time of process ``pid`` (all its threads), or of its thread
    ``thread`` (a thread id; the main thread's is ``pid``)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = open(path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_idle():
    """(idle + iowait jiffies, all jiffies) of the whole machine, from /proc/stat."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return values[3] + values[4], sum(values)


def process_cpu() -> Dict[int, Tuple[str, float]]:
    """Every process's (command, CPU seconds so far)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(
                    errors="replace").strip()
                out[int(entry)] = (command[:90] or "?", cpu_seconds(int(entry)))
            except (OSError, IndexError, ValueError):
                continue
    return out


def other_work(before, after, ours: set, seconds: float) -> List[str]:
    """The processes other than the benchmark's that used the most CPU between two
    ``process_cpu`` snapshots, as "share of one CPU: command"."""
    used = [(after[p][1] - before.get(p, ("", 0.0))[1], after[p][0]) for p in after if p not in ours]
    used.sort(reverse=True)
    return [f"{100 * cpu / seconds:.0f}% of a CPU: `{command}`" for cpu, command in used[:6]
            if cpu / seconds >= 0.02]


def measured(pid, load):
    """Run ``load()`` (returns a summary); add the server's CPU time per request (on a
    shared machine a steadier figure than wall-clock throughput) and that of its main
    thread (the event loop of the no-op server, tfxops serve and uvicorn), the share of
    the machine's CPU time left idle meanwhile, and the load average."""
    before, loop_before, idle_before = cpu_seconds(pid), cpu_seconds(pid, pid), machine_idle()
    result = load()
    requests = max(1, result["n_total"])
    result["server_cpu_ms"] = 1e3 * (cpu_seconds(pid) - before) / requests
    result["loop_cpu_ms"] = 1e3 * (cpu_seconds(pid, pid) - loop_before) / requests
    (idle0, total0), (idle1, total1) = idle_before, machine_idle()
    result["idle"] = 100.0 * (idle1 - idle0) / max(1, total1 - total0)
    result["load"] = os.getloadavg()[0]
    return result


async def grpc_load(port, method, payload: bytes, clients, seconds, max_requests=200_000):
    """``clients`` coroutines on one channel, each with one call of ``method`` in
    flight, sending ``payload`` (a serialized request) and taking the answer's bytes."""
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)
        for _ in range(50):
            await call(payload, timeout=30)
        latencies, deadline = [], time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t = time.perf_counter()
                await call(payload, timeout=30)
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        return dict(summarize(latencies, time.perf_counter() - start), n_total=len(latencies) + 50)


async def rest_load(url, body, clients, seconds, max_requests=100_000):
    from tornado.httpclient import AsyncHTTPClient

    AsyncHTTPClient.configure(None, max_clients=clients)
    client = AsyncHTTPClient(force_instance=True)
    for _ in range(20):
        await client.fetch(url, method="POST", body=body, headers=JSON)
    latencies, deadline = [], time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            t = time.perf_counter()
            await client.fetch(url, method="POST", body=body, headers=JSON)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(clients)])
    client.close()
    return dict(summarize(latencies, time.perf_counter() - start), n_total=len(latencies) + 20)


@dataclass
class Target:
    """One measured row: a server process and the requests sent to it."""
    name: str
    api: str                     # "gRPC" or "REST"
    pid: int
    load: Callable[[int, float], dict]   # (clients, seconds) -> summary
    metrics_port: Optional[int] = None   # tfxops serve's REST port: its batch-size histogram
    rows: int = 1                # rows per request


def grpc_target(name, pid, port, method, payload, metrics_port=None, rows=1) -> Target:
    return Target(name, "gRPC", pid, lambda c, s: asyncio.run(
        grpc_load(port, method, payload, c, s)), metrics_port, rows)


def rest_target(name, pid, url, body, metrics_port=None) -> Target:
    return Target(name, "REST", pid, lambda c, s: asyncio.run(rest_load(url, body, c, s)),
                  metrics_port)


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


def run_target(target: Target, clients: int, seconds: float) -> dict:
    b0 = batch_totals(target.metrics_port) if target.metrics_port else None
    result = measured(target.pid, lambda: target.load(clients, seconds))
    if b0 is not None:
        b1 = batch_totals(target.metrics_port)
        result["batch"] = (b1[0] - b0[0]) / (b1[1] - b0[1]) if b1[1] > b0[1] else None
    return result


def floor(mv, serialized, seconds, rows=1):
    """The in-process call of the signature, with the server's own session settings."""
    sig = mv.signatures[F.DEFAULT_SIGNATURE]
    feeds = {"examples": np.array((serialized[:1] * rows), dtype=object)}
    return in_process(lambda: mv.run(sig, feeds, (F.PREDICTION_KEY,)), seconds)


def tf2_call(fn, serialized, seconds):
    """The signature as a user calls it in process with TensorFlow 2
    (``tf.saved_model.load``), TensorFlow's default threading."""
    import tensorflow as tf
    examples = tf.constant(serialized[:1])
    return in_process(lambda: fn(examples=examples)[F.PREDICTION_KEY].numpy(), seconds)


def in_process(call, seconds):
    for _ in range(100):
        call()
    lat, deadline = [], time.perf_counter() + seconds
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline and len(lat) < 100_000:
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    out = summarize(lat, time.perf_counter() - start)
    out["server_cpu_ms"] = 1e3 * (time.process_time() - cpu) / len(lat)
    out["load"] = os.getloadavg()[0]
    return out


ON = "tfxops serve, batching on, logging on"
OFF = "tfxops serve, batching off, logging on"
NOLOG = "tfxops serve, batching on, logging off"
SERVERS = [  # (name, batching, logging, other settings)
    (ON, True, True, ()),
    (OFF, False, True, ()),
    (NOLOG, True, False, ()),
    ("tfxops serve, batching off, logging off", False, False, ()),
    ("tfxops serve, batching on, logging on, busy polling off", True, True,
     ("busy_poll_micros=0",)),
]
ON32 = "tfxops serve, batching on, logging on, 32-row requests"
NOLOG32 = "tfxops serve, batching on, logging off, 32-row requests"
ON_V2 = "tfxops serve, batching on, logging on, V2 protocol"
NOOP = "no-op gRPC server (ceiling)"
FASTAPI = "peer: FastAPI + uvicorn (TF Serving REST shape)"
KSERVE_V1 = "peer: KServe model server, V1 protocol"
KSERVE_V2 = "peer: KServe model server, V2 protocol"
FLOOR = "in-process `serving_default` call (floor)"
FLOOR32 = "the same call with 32 rows (a full batch)"
TF2 = "in-process `tf.saved_model.load(...).signatures[\"serving_default\"]` (reference)"


@dataclass
class Requests:
    """The same row in every shape the servers take."""
    serialized: List[bytes]    # one serialized tf.Example
    predict: bytes             # PredictRequest, 1 row
    predict32: bytes           # PredictRequest, 32 rows
    rest: bytes                # TF Serving REST body (b64 tf.Example)
    v2_rest: bytes             # V2 REST body (the raw features, serving_raw's inputs)


def complete_row(raw_inputs):
    """The first row of the data with a value for every raw input of the model."""
    from core.examples import read_csv_rows
    for row in read_csv_rows(str(REPO / "data" / "taxi" / "data.csv")):
        if all(row.get(name) not in (None, "") for name in raw_inputs):
            return row
    raise SystemExit("bench/serving.py: no row of data/taxi/data.csv has every raw feature")


def build_requests(raw_specs) -> Requests:
    import orjson
    from serving.client import predict_request, rest_body, serialize_rows

    row = complete_row(raw_specs)
    serialized = serialize_rows([row])
    v2_types = {"float32": ("FP32", float), "int64": ("INT64", lambda v: int(float(v))),
                "string": ("BYTES", str)}
    inputs = []
    for name, spec in sorted(raw_specs.items()):
        datatype, convert = v2_types[spec.dtype.name]
        inputs.append({"name": name, "shape": [1], "datatype": datatype, "data": [convert(row[name])]})
    return Requests(serialized, predict_request("taxi", serialized).SerializeToString(),
                    predict_request("taxi", serialized * 32).SerializeToString(),
                    orjson.dumps(rest_body(serialized)), orjson.dumps({"inputs": inputs}))


def answers(url: str, body: bytes) -> bool:
    import urllib.error
    import urllib.request
    try:
        request = urllib.request.Request(url, data=body, headers=JSON)
        return urllib.request.urlopen(request, timeout=30).status == 200
    except (urllib.error.URLError, OSError):
        return False


def answers_grpc(port: int, method: str, payload: bytes) -> bool:
    import grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(method)(payload, timeout=30)
            return True
        except grpc.RpcError:
            return False


def tfxops_targets(servers, req: Requests, v2_infer: Optional[bytes]) -> List[Target]:
    """tfxops serve's rows: TF Serving's gRPC for every server, REST, 32-row requests
    and the V2 protocol (when the server answers it) for the default one."""
    targets = []
    for name, batching, logging_on, extra in SERVERS:
        proc, rest, grpc_port = servers[name]
        targets.append(grpc_target(name, proc.pid, grpc_port, PREDICT, req.predict, rest))
        if name == ON:
            targets.append(rest_target(name, proc.pid, f"http://127.0.0.1:{rest}/v1/models/taxi:predict",
                                       req.rest, rest))
            targets.append(grpc_target(ON32, proc.pid, grpc_port, PREDICT, req.predict32, rest, 32))
            url = f"http://127.0.0.1:{rest}/v2/models/taxi/infer"
            if answers(url, req.v2_rest):
                targets.append(rest_target(ON_V2, proc.pid, url, req.v2_rest, rest))
            if v2_infer is not None and answers_grpc(grpc_port, MODEL_INFER, v2_infer):
                targets.append(grpc_target(ON_V2, proc.pid, grpc_port, MODEL_INFER, v2_infer, rest))
        if name == NOLOG:
            targets.append(grpc_target(NOLOG32, proc.pid, grpc_port, PREDICT, req.predict32, rest, 32))
    return targets


def start_peers(model_dir: str, tmp: Path):
    """The peers' processes: {name: (proc, http port, grpc port)}, and their python."""
    from bench.peers import peer_venv

    python = peer_venv.peer_python()
    fast_port, ks_http, ks_grpc = free_port(), free_port(), free_port()
    peers = {FASTAPI: (peer_venv.fastapi(python, model_dir, fast_port, tmp / "fastapi.log"),
                       fast_port, None),
             KSERVE_V1: (peer_venv.kserve(python, model_dir, ks_http, ks_grpc, tmp / "kserve.log"),
                         ks_http, ks_grpc)}
    return peers, python


def peer_targets(peers, req: Requests, v2_infer: bytes) -> List[Target]:
    fast, fast_port, _ = peers[FASTAPI]
    ks, ks_http, ks_grpc = peers[KSERVE_V1]
    return [rest_target(FASTAPI, fast.pid, f"http://127.0.0.1:{fast_port}/v1/models/taxi:predict",
                        req.rest),
            rest_target(KSERVE_V1, ks.pid, f"http://127.0.0.1:{ks_http}/v1/models/taxi:predict",
                        req.rest),
            rest_target(KSERVE_V2, ks.pid, f"http://127.0.0.1:{ks_http}/v2/models/taxi/infer",
                        req.v2_rest),
            grpc_target(KSERVE_V2, ks.pid, ks_grpc, MODEL_INFER, v2_infer)]


def median_row(samples):
    keys = ("p50", "p99", "rps", "server_cpu_ms", "loop_cpu_ms", "idle", "load")
    out = {k: float(np.median([r.get(k, np.nan) for r in samples])) for k in keys}
    out["n"] = int(sum(r["n"] for r in samples))
    batches = [r["batch"] for r in samples if r.get("batch")]
    out["batch"] = float(np.median(batches)) if batches else None
    return out


@dataclass
class Goal:
    text: str
    unit: str            # "x", "%" or "ms"
    target: str          # how the goal reads, e.g. ">= 2x"
    test: Callable[[float], bool]
    per_round: Callable[[dict], float]   # the round's rows -> the measured value


SHORT = {ON: "tfxops serve", ON_V2: "tfxops serve (V2)", FASTAPI: "FastAPI + uvicorn",
         KSERVE_V1: "KServe V1", KSERVE_V2: "KServe V2"}


def goals(comparisons: List[Tuple[str, str, str]]) -> List[Goal]:
    """Issue 17's goals; ``comparisons``: (peer row, API, our row) triples measured."""
    on32, off32, noop32 = (ON, "gRPC", 32), (OFF, "gRPC", 32), (NOOP, "gRPC", 32)
    out = []
    for peer, api, ours in comparisons:
        out.append(Goal(f"throughput, 32 clients, {api}: {SHORT[ours]} / {SHORT[peer]}", "x", ">= 2x",
                        lambda v: v >= 2.0, lambda r, p=peer, a=api, o=ours:
                        r[(o, a, 32)]["rps"] / r[(p, a, 32)]["rps"]))
        out.append(Goal(f"lone client p50, {api}: {SHORT[peer]} / {SHORT[ours]}", "x", "> 1x (ours lower)",
                        lambda v: v > 1.0, lambda r, p=peer, a=api, o=ours:
                        r[(p, a, 1)]["p50"] / r[(o, a, 1)]["p50"]))
    out += [
        Goal("server CPU per request (single-row gRPC Predict, 32 clients): tfxops serve / no-op",
             "x", "<= 1.2x", lambda v: v <= 1.2,
             lambda r: r[on32]["server_cpu_ms"] / r[noop32]["server_cpu_ms"]),
        Goal("batching at 32 clients (gRPC): share of the headroom between the unbatched rate and "
             "the no-op ceiling captured", "%", ">= 80%", lambda v: v >= 80.0,
             lambda r: 100 * (r[on32]["rps"] - r[off32]["rps"]) / (r[noop32]["rps"] - r[off32]["rps"])),
        Goal("32-row requests (gRPC, 32 clients): rows/s against the in-process 32-row call's "
             "(both 32 rows a call: the ratio of calls/s)", "%",
             ">= 70%", lambda v: v >= 70.0,
             lambda r: 100 * r[(ON32, "gRPC", 32)]["rps"] / r[(FLOOR32, "-", 1)]["rps"]),
        Goal("lone client p50 (gRPC) minus (no-op p50 + in-process call p50)", "ms", "<= 0.3 ms",
             lambda v: v <= 0.3,
             lambda r: r[(ON, "gRPC", 1)]["p50"] - r[(NOOP, "gRPC", 1)]["p50"] - r[(FLOOR, "-", 1)]["p50"]),
    ]
    return out


def fmt(value, unit):
    return f"{value:.2f} {unit}" if unit in ("ms", "x") else f"{value:.0f}{unit}"


def pushed_model_dir(model_dir: Optional[str], settings) -> str:
    from core.pushdir import newest_version
    if model_dir:
        if not (Path(model_dir) / "saved_model.pb").is_file():
            sys.exit(f"bench/serving.py: --model-dir {model_dir} holds no saved_model.pb; pass a "
                     f"pushed version directory (<serving_dir>/<model>/<version>)")
        return model_dir
    push = settings.model_push_dir
    newest = newest_version(str(push))
    if newest is None:
        sys.exit(f"bench/serving.py: no pushed model under {push}; run `make run` first "
                 f"or pass --model-dir DIR (a pushed version directory)")
    return str(push / str(newest))


def check_targets(targets: List[Target], logs: Path) -> None:
    """Each row's request answered once, or exit naming the row (server logs in ``logs``)."""
    for target in targets:
        try:
            target.load(1, 0.01)
        except Exception as exc:   # noqa: BLE001 - any failure ends the run, named
            sys.exit(f"bench/serving.py: {target.name} ({target.api}) did not answer: {exc} "
                     f"(peer logs in {logs})")


def run_rounds(args, targets: List[Target], mv, tf2_fn, req: Requests) -> Dict[tuple, List[dict]]:
    """Every row once per round: {(row, API, clients): [result of each round]}."""
    samples: Dict[tuple, List[dict]] = {}

    def add(key, result):
        samples.setdefault(key, []).append(result)

    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds} ...", flush=True)
        add((FLOOR, "-", 1), floor(mv, req.serialized, args.seconds))
        add((TF2, "-", 1), tf2_call(tf2_fn, req.serialized, args.seconds))
        add((FLOOR32, "-", 1), floor(mv, req.serialized, args.seconds, rows=32))
        for clients in (1, 32):
            for target in targets:
                add((target.name, target.api, clients), run_target(target, clients, args.seconds))
    return samples


TABLE_HEAD = ["| setup | API | clients | p50 ms | p99 ms | requests/s | requests | server CPU ms/req "
              "| loop CPU ms/req | rows/batch | machine idle | load |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def table_lines(order, samples) -> List[str]:
    lines = list(TABLE_HEAD)
    for name, api, c in order:
        r = median_row(samples[(name, api, c)])
        batch = f"{r['batch']:.1f}" if r.get("batch") else "-"
        loop = "-" if np.isnan(r["loop_cpu_ms"]) else format(r["loop_cpu_ms"], ".3f")
        idle = "-" if np.isnan(r["idle"]) else format(r["idle"], ".0f") + "%"
        lines.append(f"| {name} | {api} | {c} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} "
                     f"| {r['n']} | {r['server_cpu_ms']:.2f} | {loop} | {batch} | {idle} "
                     f"| {r['load']:.1f} |")
    return lines


def goal_lines(goal_list: List[Goal], samples, rounds: int) -> List[str]:
    lines = ["| goal | measured (median over rounds) | range over rounds | target | met |",
             "|---|---:|---|---|---|"]
    for goal in goal_list:
        values = [goal.per_round({k: v[i] for k, v in samples.items()}) for i in range(rounds)]
        med = float(np.median(values))
        lines.append(f"| {goal.text} | **{fmt(med, goal.unit)}** | {fmt(min(values), goal.unit)} .. "
                     f"{fmt(max(values), goal.unit)} | {goal.target} "
                     f"| {'met' if goal.test(med) else '**not met**'} |")
    return lines


def context_lines(args, settings, load, others: List[str], peers: bool) -> List[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    peer_note = ("Peers: FastAPI + uvicorn (bench/peers/fastapi_server.py: `tf.saved_model.load`, "
                 "the signature called in a plain `def` handler, `uvicorn.run` with its defaults, "
                 "one worker) and KServe's model server 0.15.2 (bench/peers/kserve_server.py, one "
                 "worker), TensorFlow 2.16.2 with protobuf 4.25 in their own virtualenv "
                 "(bench/peers/requirements-peers.txt). V2 REST bodies carry the row's raw "
                 "features (`serving_raw`; JSON has no bytes), V2 gRPC a serialized tf.Example "
                 "(`serving_default`)." if peers else "Peers not measured (--no-peers).")
    return [f"Machine: {os.cpu_count()} CPUs (nproc), {cpu}; Python {platform.python_version()}. "
            f"One complete row of data/taxi/data.csv per request (32 copies for the 32-row rows); "
            f"client and servers on the same machine, {args.rounds} rounds of {args.seconds:g} s "
            f"per row. tfxops serve with its defaults (`max_batch_size` {settings.max_batch_size}, "
            f"`batch_timeout_micros` {settings.batch_timeout_micros}, session threads intra "
            f"{settings.intra_op_threads} / inter {settings.inter_op_threads}, `busy_poll_micros` "
            f"{settings.busy_poll_micros}) but for the settings its row names.", "", peer_note, "",
            f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end. Other "
            f"work on the machine during the run (CPU used, from /proc): "
            + ("; ".join(others) if others else "none above 2% of a CPU") + ".", "",
            "Each cell is the median over the rounds. \"server CPU\": all threads of the server "
            "process per request (for the in-process rows, the calling process); \"loop CPU\": its "
            "main thread alone (the event loop of tfxops serve, the no-op server and uvicorn); "
            "\"rows/batch\": tfxops serve's mean model-call batch size; \"machine idle\": the share "
            "of both CPUs' time nobody used during the row."]


BEGIN = "<!-- bench/serving.py output: begin (each run rewrites the text up to the end marker) -->"
END = "<!-- bench/serving.py output: end -->"


def write_section(path: Path, lines: List[str]) -> None:
    """Put ``lines`` between the markers at the top of ``path`` (after its title),
    keeping everything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Serving benchmark\n"
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n\n{body.lstrip()}"
    path.write_text(text)


def start_all(args, settings, model_dir: str, tmp: Path):
    """Every server process (started at once, then waited for): tfxops serve's,
    the no-op server, the peers; {name: (proc, http port, grpc port)} and the peers'
    python (None without peers)."""
    shutil.copytree(model_dir, tmp / "serving_model" / "taxi" / "1")
    servers = {}
    for i, (name, batching, logging_on, extra) in enumerate(SERVERS):
        servers[name] = start_server(str(tmp / "serving_model"), str(tmp / f"home{i}"),
                                     batching, logging_on, extra)
    noop_port = free_port()
    servers[NOOP] = (subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(noop_port),
                                       str(settings.busy_poll_micros)], cwd=REPO), None, noop_port)
    python = None
    if args.peers:
        peers, python = start_peers(model_dir, tmp)
        servers.update(peers)
    for proc, http, grpc_port in servers.values():
        for port in (http, grpc_port):
            if port is not None:
                wait_listening(port, proc, timeout=300)
    return servers, python


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", help="a pushed version dir (default: newest under ./outputs)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per row and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="skip FastAPI and KServe (and their virtualenv)")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench-serving.md"))
    args = ap.parse_args()
    from serving.models import ModelVersion, SessionThreads
    from core import config
    import tensorflow as tf

    settings = config.load({})
    model_dir = pushed_model_dir(args.model_dir, settings)
    tf2_model = tf.saved_model.load(model_dir)
    tf2_fn = tf2_model.signatures[F.DEFAULT_SIGNATURE]
    req = build_requests(tf2_model.signatures["serving_raw"].structured_input_signature[1])
    mv = ModelVersion("taxi", 1, model_dir,
                      SessionThreads(settings.intra_op_threads, settings.inter_op_threads))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    load_before, cpu_before, started = os.getloadavg()[0], process_cpu(), time.monotonic()
    print("starting the servers ...", flush=True)
    servers, python = start_all(args, settings, model_dir, tmp)
    try:
        time.sleep(2.0)
        v2_infer = None
        if python is not None:
            from bench.peers import peer_venv
            v2_infer = peer_venv.v2_infer_request(python, req.serialized[0])
        targets = [grpc_target(NOOP, servers[NOOP][0].pid, servers[NOOP][2], PREDICT, req.predict)]
        targets += tfxops_targets(servers, req, v2_infer)
        if python is not None:
            targets += peer_targets(servers, req, v2_infer)
        check_targets(targets, tmp)
        samples = run_rounds(args, targets, mv, tf2_fn, req)
    finally:
        for proc, _, _ in servers.values():
            stop(proc)
        mv.close()
    ours = {os.getpid()} | {proc.pid for proc, _, _ in servers.values()}
    others = other_work(cpu_before, process_cpu(), ours, time.monotonic() - started)
    shutil.rmtree(tmp, ignore_errors=True)     # kept when the run failed: the servers' logs
    report(args, settings, samples, targets, (load_before, os.getloadavg()[0]), others)


def report(args, settings, samples, targets: List[Target], load, others) -> None:
    measured_rows = {(t.name, t.api) for t in targets}
    comparisons = [(peer, api, ON) for peer, api in ((FASTAPI, "REST"), (KSERVE_V1, "REST"),
                                                     (KSERVE_V2, "REST"), (KSERVE_V2, "gRPC"))
                   if (peer, api) in measured_rows]
    comparisons += [(KSERVE_V2, api, ON_V2) for api in ("REST", "gRPC")
                    if (ON_V2, api) in measured_rows and (KSERVE_V2, api) in measured_rows]
    order = [(FLOOR, "-", 1), (TF2, "-", 1), (FLOOR32, "-", 1)] + [
        (t.name, t.api, c) for c in (1, 32) for t in targets]
    goal_list = goals(comparisons)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: tfxops serve against its "
             f"peers (`make bench-serving`)", ""]
    lines += context_lines(args, settings, load, others, args.peers)
    lines += ["", *table_lines(order, samples), "", "### Goals (issue 17)", "",
              "Each goal is computed within each round (the rows of one round ran minutes apart at "
              "most); the median over the rounds decides met / not met.", "",
              *goal_lines(goal_list, samples, args.rounds)]
    if not any(t.name == ON_V2 for t in targets):
        lines += ["", "tfxops serve did not answer the V2 protocol in this run (no `/v2` routes or "
                      "`inference.GRPCInferenceService`): no tfxops V2 rows."]
    write_section(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
