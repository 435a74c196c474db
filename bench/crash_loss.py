"""What ``kill -9`` costs the request log (run by hand): clients send single-row
requests continuously (REST and gRPC, each with its own request id), the server
is killed at a random moment, restarted on the same directories (it recovers the
killed writer's file), and every acknowledged request (answered 200 / OK) is looked
up in the closed log files.

    .venv/bin/python bench/crash_loss.py [--model-dir DIR] [--runs 3] [--clients 4]

Prints, per run: requests acknowledged, found in the log, lost, and how long
before the kill the lost ones were answered (the flush policy bounds it by
about ``serving.log_writer.DRAIN_SECONDS`` plus one drain).
"""
import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from core.env import set_process_environment

set_process_environment()

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import config, request_log  # noqa: E402
from serving import client  # noqa: E402
from core.ports import free_port  # noqa: E402
from core.examples import read_csv_rows  # noqa: E402
from core.pushdir import newest_version  # noqa: E402


def _serve(home: Path, rest: int, grpc_port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfxops.cli", "serve", "--home", str(home),
         "--set", f"rest_port={rest}", "--set", f"grpc_port={grpc_port}"],
        stdout=subprocess.DEVNULL, stderr=open(home / "serve.log", "a"))
    client.wait_listening(rest, proc)
    client.wait_listening(grpc_port, proc)
    return proc


def _send(protocol, port, rows, prefix, acked, stop):
    """Send until ``stop``; acked: request id -> when its answer came."""
    c = client.make_client(protocol, "127.0.0.1", port, "taxi")
    n = 0
    while not stop.is_set():
        rid = f"{prefix}-{n}"
        n += 1
        try:
            c.predict_rows([rows[n % len(rows)]], request_id=rid)
        except Exception:   # noqa: BLE001 - the kill: stop sending
            return
        acked[rid] = time.monotonic()


def run_once(model_dir: Path, rows, clients: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="crash-loss-"))
    settings = config.load({"home": str(home)})
    shutil.copytree(model_dir, settings.model_push_dir / "1")
    rest, grpc_port = free_port(), free_port()
    proc = _serve(home, rest, grpc_port)
    acked, stop = {}, threading.Event()
    threads = [threading.Thread(target=_send, args=(protocol, port, rows, f"{protocol}{i}",
                                                    acked, stop))
               for i in range(clients) for protocol, port in (("rest", rest), ("grpc", grpc_port))]
    for t in threads:
        t.start()
    time.sleep(random.uniform(3.0, 8.0))
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    stop.set()
    for t in threads:
        t.join(60)
    _serve(home, rest, grpc_port).terminate()      # restarts: recovers the killed file
    found = {r.request_id for r in request_log.read_request_log(settings.request_logs_path)}
    lost = [rid for rid in acked if rid not in found]
    before_kill = sorted(round((killed - acked[rid]) * 1000) for rid in lost)
    shutil.rmtree(home, ignore_errors=True)
    return {"acknowledged": len(acked), "logged": len(found), "lost": len(lost),
            "lost_ms_before_kill": before_kill}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", help="a pushed version dir (default: newest under ./outputs)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4, help="per protocol")
    args = ap.parse_args()
    push = config.load({}).model_push_dir
    model_dir = Path(args.model_dir) if args.model_dir else push / str(newest_version(str(push)))
    rows = list(read_csv_rows(str(REPO / "data" / "taxi" / "data.csv")))[:200]
    for i in range(args.runs):
        result = run_once(model_dir, rows, args.clients)
        print(f"run {i + 1}: {result['acknowledged']} acknowledged, {result['logged']} in the log "
              f"after restart, {result['lost']} lost (answered "
              f"{result['lost_ms_before_kill'] or '-'} ms before the kill)", flush=True)


if __name__ == "__main__":
    main()
