"""Benchmark: the tfxops pipeline beside TFX's own Chicago taxi example, on the full
15,002 rows, on this machine, in one session.

Measures, each in a fresh process:
  * TFX's taxi example (taxi_pipeline_native_keras.py from the tfx wheel, as shipped:
    BeamDagRunner, DirectRunner multi_processing, 1000 train steps), cold;
  * tfxops run, cold (empty home) and warm (the same home again: fully cached);
  * the cost of importing TensorFlow/TFX/TFMA alone (start-up floor).
Reports wall time, peak RSS of the whole process tree, per-component times from each
run's MLMD, and the AUC of both pushed models on the same eval split (ExampleGen's
default hash split, identical for both pipelines; checked).

Run: `make bench` or `.venv/bin/python bench/pipeline.py [--out docs/bench-pipeline.md]`.
Takes about 4 minutes. Not part of the tests.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from core.env import set_process_environment
set_process_environment()
from core import config  # noqa: E402
from core import features as F  # noqa: E402
from core.pushdir import newest_version  # noqa: E402
PY = sys.executable
ENV = dict(os.environ, PYTHONWARNINGS="ignore")   # os.environ: set_process_environment() above

REFERENCE_DRIVER = textwrap.dedent("""
    import os, sys
    from tfx.examples.chicago_taxi_pipeline import taxi_pipeline_native_keras as ref
    from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
    work, module_file, data_root = sys.argv[1], sys.argv[2], sys.argv[3]
    BeamDagRunner().run(ref._create_pipeline(
        pipeline_name='chicago_taxi_native_keras',
        pipeline_root=os.path.join(work, 'pipeline_root'),
        data_root=data_root,
        module_file=module_file,
        serving_model_dir=os.path.join(work, 'serving_model'),
        metadata_path=os.path.join(work, 'metadata.db'),
        beam_pipeline_args=ref._beam_pipeline_args))
""")


def measure(cmd, log_path, cwd=None):
    """Run ``cmd``; return wall seconds, peak RSS (MiB) of its process tree, exit code."""
    with open(log_path, "w") as log:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
        wall = time.monotonic() - start
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak / 2**20), "exit": proc.returncode}


def component_times(metadata_path, run_index=-1):
    """{component: seconds} from MLMD executions of one pipeline run (newest by default)."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    types = {t.id: t.name for t in store.get_execution_types()}
    times = {}
    for execution in store.get_executions_by_context(runs[run_index].id):
        name = types[execution.type_id].rsplit(".", 1)[-1]
        name = {"AtomicPusher": "Pusher", "DataGate": "DataGate"}.get(name, name)
        seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        times[name] = (round(seconds, 1), state)
    return times


def eval_split(pipeline_root):
    files = sorted(glob.glob(os.path.join(pipeline_root, "CsvExampleGen", "examples", "*", "Split-eval", "*")))
    records = []
    for path in files:
        import tensorflow as tf
        records.extend(r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP"))
    return records


def _canonical(records):
    """The examples as sorted rows (serialized bytes differ in map order, not content)."""
    import tensorflow as tf
    from core.examples import example_to_row

    return sorted(repr(sorted(example_to_row(tf.train.Example.FromString(r)).items())) for r in records)


def auc_on(model_dir, records, output_key):
    import numpy as np
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    model = tf.saved_model.load(model_dir)
    fn = model.signatures[F.DEFAULT_SIGNATURE]
    scores = []
    for i in range(0, len(records), 1024):
        out = fn(examples=tf.constant(records[i:i + 1024]))
        scores.append(out[output_key].numpy().reshape(-1))
    labels = []
    for record in records:
        example = tf.train.Example.FromString(record)
        tips = example.features.feature[F.LABEL_KEY].float_list.value
        fare = example.features.feature[F.FARE_KEY].float_list.value
        tip, fare_value = (tips[0] if tips else float("nan")), (fare[0] if fare else 0.0)
        labels.append(int(F.is_big_tipper(np.float32(tip), np.float32(fare_value))))
    return round(float(roc_auc_score(labels, np.concatenate(scores))), 4)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
            "date": datetime.date.today().isoformat()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "bench-pipeline.md"))
    parser.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="tfxops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    import tfx
    tfx_dir = Path(tfx.__file__).parent / "examples" / "chicago_taxi_pipeline"
    results = {"machine": machine()}

    print("== start-up: importing TensorFlow, TFX, TFMA", flush=True)
    results["imports"] = measure(
        [PY, "-c", "from core.env import set_process_environment; set_process_environment(); from tfx import v1; import tensorflow_model_analysis, tensorflow_transform"],
        work / "imports.log")

    print("== reference: TFX taxi example (cold)", flush=True)
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    (ref / "module").mkdir(parents=True)
    module_file = ref / "module" / "taxi_utils_native_keras.py"
    shutil.copy(tfx_dir / "taxi_utils_native_keras.py", module_file)
    driver = ref / "driver.py"
    driver.write_text(REFERENCE_DRIVER)
    results["reference"] = measure([PY, str(driver), str(ref), str(module_file), str(tfx_dir / "data" / "simple")],
                                   work / "reference.log")
    results["reference"]["components"] = component_times(ref / "metadata.db")

    print("== tfxops run (cold)", flush=True)
    ours = work / "tfxops"
    shutil.rmtree(ours, ignore_errors=True)
    settings = config.load({"home": str(ours)})   # the paths the CLI below derives
    cli = [PY, "-m", "tfxops.cli", "run", "--home", str(ours), "--json"]
    results["cold"] = measure(cli, work / "cold.log", cwd=REPO)
    results["cold"]["components"] = component_times(settings.metadata_file)
    print("== tfxops run (warm: unchanged data and code)", flush=True)
    results["warm"] = measure(cli, work / "warm.log", cwd=REPO)
    results["warm"]["components"] = component_times(settings.metadata_file)

    print("== AUC of both pushed models on the same eval split", flush=True)
    ours_eval, ref_eval = eval_split(settings.pipeline_root_path), eval_split(ref / "pipeline_root")
    same = _canonical(ours_eval) == _canonical(ref_eval)
    ours_model = str(settings.model_push_dir / str(newest_version(str(settings.model_push_dir))))
    ref_model = str(ref / "serving_model" / str(newest_version(str(ref / "serving_model"))))
    results["eval"] = {"rows": len(ours_eval), "same_split": same,
                       "auc_tfxops": auc_on(ours_model, ours_eval, F.PREDICTION_KEY),
                       "auc_reference": auc_on(ref_model, ours_eval, "outputs")}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    print(f"(raw results and logs in {work})")
    return 0 if all(results[k]["exit"] == 0 for k in ("reference", "cold", "warm")) else 1


def render(r):
    m, ref, cold, warm, ev = r["machine"], r["reference"], r["cold"], r["warm"], r["eval"]
    names = ["CsvExampleGen", "StatisticsGen", "SchemaGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
             "Transform", "Trainer", "Resolver", "Evaluator", "Pusher"]
    rows = []
    for name in names:
        cells = []
        for run in (ref, cold, warm):
            value = run["components"].get(name)
            cells.append("-" if value is None else f"{value[0]:.1f}" + (" (cached)" if value[1] == "CACHED" else ""))
        if any(c != "-" for c in cells):
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    half = ref["wall_s"] / 2
    return "\n".join([
        "# Pipeline benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"measured {m['date']} by `bench/pipeline.py`, all runs in the same session.",
        "",
        "Full Chicago taxi sample (15,002 rows). Reference: TFX's own `taxi_pipeline_native_keras.py` from the "
        "tfx 1.16.0 wheel as shipped (BeamDagRunner, DirectRunner multi_processing, 1000 train steps, "
        "`TF_USE_LEGACY_KERAS=1`). tfxops: `tfxops run` with its defaults (LocalDagRunner, DirectRunner "
        "in_memory, data gate, curated schema, two serving signatures, atomic push).",
        "",
        "| | reference (cold) | tfxops (cold) | tfxops (warm rerun) |",
        "|---|---:|---:|---:|",
        f"| wall time, whole command (s) | {ref['wall_s']} | {cold['wall_s']} | {warm['wall_s']} |",
        f"| peak RSS, process tree (MiB) | {ref['peak_rss_mib']} | {cold['peak_rss_mib']} | {warm['peak_rss_mib']} |",
        f"| eval AUC, same {ev['rows']}-row eval split | {ev['auc_reference']} | {ev['auc_tfxops']} | (same model) |",
        "",
        "Per component (seconds, from each run's MLMD):",
        "",
        "| component | reference | tfxops cold | tfxops warm |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Goal: cold run at most half the reference's wall time ({half:.1f} s): "
        f"**{'met' if cold['wall_s'] <= half else 'not met'}** ({cold['wall_s']} s). "
        f"AUC at least the reference's: **{'met' if ev['auc_tfxops'] >= ev['auc_reference'] else 'not met'}**. "
        f"Warm rerun under 15 s: **{'met' if warm['wall_s'] < 15 else 'not met'}** ({warm['wall_s']} s). "
        f"Eval split identical in both pipelines: {ev['same_split']}.",
        "",
        f"Start-up floor: importing TensorFlow, TFX, TFMA and TFT alone takes {r['imports']['wall_s']} s "
        f"of every run (and of the warm rerun).",
        "",
        "## Where the time goes, and what tfxops does about it",
        "",
        "Found by profiling the reference and earlier tfxops runs (cProfile, timestamps in the run log):",
        "",
        "- **AutoGraph transpiling library code** (12-25 s per process): AutoGraph skips `tensorflow` and "
        "`keras` but not `tf_keras` (what `TF_USE_LEGACY_KERAS=1` selects) nor `tensorflow_transform`, so the "
        "first `fit` and every traced Transform layer rewrite hundreds of library functions. "
        "`core.env.skip_autograph_for_libraries()` adds them to AutoGraph's do-not-convert list "
        "(a trivial Keras model's first train step: 12 s -> 0.2 s).",
        "- **Beam worker processes**: the reference runs the DirectRunner in multi_processing mode with one "
        "worker per core; each Beam component starts fresh Python workers that import TensorFlow again. "
        "tfxops uses the in_memory DirectRunner (one process), the faster choice for data this size.",
        "- **TFX packaging itself for remote workers**: with any non-empty `beam_pipeline_args`, every Beam "
        "component builds an sdist of TFX (about 1.3 s each). tfxops passes none locally.",
        "- **User-module wheels**: `module_file=` makes TFX build a wheel of the module directory and "
        "`pip install` it several times per component (about 1 s each). tfxops names its functions by "
        "module path and puts a fingerprint of the code package in the components' properties, so a code "
        "change still invalidates the cache.",
        "- **Materialising transformed data**: the reference's Transform writes a transformed copy of both "
        "splits and pre/post-transform statistics; tfxops' Trainer applies the transform graph as it reads "
        "(`materialize=False`, `disable_statistics=True`).",
        "- **Evaluator batches**: TFMA's default batching starts at 1 row and grows; tfxops sets "
        "`inference_batch_size=1024`.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
