"""The monitor's two engines (``monitor_engine``: local, beam) on the same window:
a few thousand logged requests of two model versions (one with lineage, one
without), rejected calls, one corrupt file and labels for part of the requests.

Tolerances (also in docs/architecture.md):
* counts are exact: requests, rows, rows per signature, rejections, labelled rows,
  files read and their offsets, unreadable files, and per feature of each
  version's statistics (of its rows and of its served outputs) ``num_examples``, ``num_non_missing``, ``num_missing``,
  ``min``/``max``, the string features' ``unique`` and top values;
* numeric ``mean`` and ``std_dev``: relative 1e-6 (float sums in another order);
* quantile-based figures (the JS skew and drift of numeric features and the
  prediction drift, read from TFDV's quantiles sketches, approximate and merged
  in another order): 0.02 absolute; the L-infinity skew of string features
  (exact counts): 1e-9;
* the decision (action, triggered, reasons) is the same.
"""
import csv
import time

import pytest

from core import features as F, request_log
from monitoring import checks, engine as engine_lib, monitor, traffic as traffic_lib, window as window_lib
from monitoring.beam_engine import BeamEngine
from tests.monitoring.conftest import log_records, monitor_settings, write_logs
from tests.conftest import SMALL_ROWS

MEAN_RELATIVE = 1e-6
QUANTILE_DISTANCE = 0.02
PORTABLE = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


def _requests(rows, sizes=(1, 2, 3)):
    out, i = [], 0
    while i < len(rows):
        n = sizes[len(out) % len(sizes)]
        out.append(rows[i:i + n])
        i += n
    return out


def _rejected(version, rows, prefix):
    from serving.client import predict_request, serialize_rows

    return [request_log.rejected_record("taxi", version, F.DEFAULT_SIGNATURE, f"{prefix}-{i}", time.time(),
                                        "INVALID_ARGUMENT", f"Name: <unknown>, Feature: fare (data type: float) "
                                        f"is required but could not be found. {i}",
                                        predict_request("taxi", serialize_rows([row])))
            for i, row in enumerate(rows)]


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def window_settings(tmp_path_factory, e2e_settings, first_run, taxi_rows):
    """A monitor home whose request logs hold the window."""
    from tensorflow_serving.apis import prediction_log_pb2

    settings = monitor_settings(tmp_path_factory.mktemp("engines"), e2e_settings, first_run,
                                monitor_min_rows="100", monitor_min_labelled="20")
    served = int(first_run.pushed_version)
    rows = taxi_rows[SMALL_ROWS:SMALL_ROWS + 3000]
    current = _requests(rows[:1800])
    other = _requests(rows[1800:])
    records = log_records(current, served, prefix="a") + log_records(other, served + 1, prefix="b")
    records += [prediction_log_pb2.PredictionLog.FromString(r) for r in _rejected(served, rows[:40], "x")]
    logs = settings.request_logs_path
    files = write_logs(logs, records, rotate_records=400)
    _corrupt(files[1])
    settings.feedback_path.mkdir(parents=True)
    with open(settings.feedback_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "row", F.LABEL_KEY])
        for i, chunk in enumerate(current[::3]):
            for j, row in enumerate(chunk):
                writer.writerow([f"a-{i * 3}", j, row[F.LABEL_KEY]])
    return settings


def _read(settings, engine):
    win = window_lib.open_window(window_lib.Checkpoint(settings.monitor_path), settings.request_logs_path,
                                 settings.monitor_max_files, persist=False)
    return engine.read_window(win, traffic_lib.load_feedback(settings.feedback_path),
                              monitor.decoding_schema(settings))


def _numeric(feature):
    kind = feature.WhichOneof("stats")
    return getattr(feature, kind) if kind else None


def _assert_same_statistics(local, beam, where):
    local_set, beam_set = local.datasets[0], beam.datasets[0]
    assert beam_set.num_examples == local_set.num_examples, where
    by_name = {".".join(f.path.step): f for f in beam_set.features}
    assert sorted(by_name) == sorted(".".join(f.path.step) for f in local_set.features), where
    for feature in local_set.features:
        name = ".".join(feature.path.step)
        mine, theirs = _numeric(feature), _numeric(by_name[name])
        if mine is None:
            continue
        assert theirs.common_stats.num_non_missing == mine.common_stats.num_non_missing, (where, name)
        assert theirs.common_stats.num_missing == mine.common_stats.num_missing, (where, name)
        if feature.WhichOneof("stats") == "num_stats":
            assert (theirs.min, theirs.max, theirs.num_zeros) == (mine.min, mine.max, mine.num_zeros), (where, name)
            assert theirs.mean == pytest.approx(mine.mean, rel=MEAN_RELATIVE), (where, name)
            assert theirs.std_dev == pytest.approx(mine.std_dev, rel=MEAN_RELATIVE), (where, name)
        else:
            assert theirs.unique == mine.unique, (where, name)
            assert [(v.value, v.frequency) for v in theirs.top_values] == \
                [(v.value, v.frequency) for v in mine.top_values], (where, name)


def _assert_same_traffic(local, beam):
    assert sorted(beam.versions) == sorted(local.versions) and len(local.versions) == 2
    for key, mine in local.versions.items():
        theirs = beam.versions[key]
        assert (theirs.requests, theirs.rows, theirs.all_requests) == (mine.requests, mine.rows, mine.all_requests)
        assert theirs.rows_by_signature() == mine.rows_by_signature()
        assert theirs.rejections == mine.rejections
        assert sorted(theirs.labelled) == sorted(mine.labelled)      # the local workers' order is theirs
        assert theirs.sample.rows == mine.sample.rows and mine.sample.rows    # attribution drift's rows
        _assert_same_statistics(mine.stats.result(), theirs.stats.result(), key)
        _assert_same_statistics(mine.served_statistics(), theirs.served_statistics(), (key, "outputs"))
    assert beam.file_results == local.file_results
    assert [(u.file, u.kind) for u in beam.unreadable] == [(u.file, u.kind) for u in local.unreadable]
    assert beam.unreadable and beam.unattributed == local.unattributed


def _assert_same_judgement(local, beam):
    assert beam.status == local.status and beam.rows == local.rows and beam.requests == local.requests
    assert [q["file"] for q in beam.quarantined_files] == [q["file"] for q in local.quarantined_files]
    assert [v.version for v in beam.not_judged] == [v.version for v in local.not_judged]
    (mine,), (theirs,) = local.versions, beam.versions
    assert (theirs.decision.action, theirs.decision.triggered, theirs.decision.reasons) == \
        (mine.decision.action, mine.decision.triggered, mine.decision.reasons)
    assert (beam.decision.action, beam.decision.triggered) == (local.decision.action, local.decision.triggered)
    assert theirs.quality.get("labelled_rows") == mine.quality.get("labelled_rows") > 0
    assert theirs.bias == mine.bias and mine.bias.slices      # the sensitive slices' tallies and labels
    assert (theirs.attribution.ndcg, theirs.attribution.shifts) == (mine.attribution.ndcg, mine.attribution.shifts)
    assert mine.attribution.available
    assert theirs.quality.get("auc") == pytest.approx(mine.quality.get("auc"))
    assert theirs.prediction["available"] == mine.prediction["available"]
    assert theirs.prediction.get("distance") == pytest.approx(mine.prediction.get("distance"), abs=QUANTILE_DISTANCE)
    assert theirs.prediction.get("served_mean") == pytest.approx(mine.prediction.get("served_mean"),
                                                                 rel=MEAN_RELATIVE)
    features = {f.name: f for f in theirs.features}
    for feature in mine.features:
        other = features[feature.name]
        assert other.anomalies == feature.anomalies, feature.name
        if feature.skew is not None:
            tolerance = QUANTILE_DISTANCE if feature.skew_measure == "JENSEN_SHANNON_DIVERGENCE" else 1e-9
            assert other.skew == pytest.approx(feature.skew, abs=tolerance), feature.name
            assert other.over_skew == feature.over_skew, feature.name


def test_both_engines_read_the_same_window_alike_on_direct_runner(window_settings):
    local = _read(window_settings, engine_lib.LocalEngine(workers=2))
    beam = _read(window_settings, BeamEngine([], str(window_settings.monitor_path / "beam")))
    _assert_same_traffic(local, beam)


def test_both_engines_judge_the_window_alike(window_settings):
    import dataclasses

    local = monitor.monitor_once(window_settings, dry_run=True)
    beam = monitor.monitor_once(dataclasses.replace(window_settings, monitor_engine="beam"), dry_run=True)
    _assert_same_judgement(local, beam)


def test_the_beam_engine_on_the_portable_runner(window_settings):
    import dataclasses

    local = _read(window_settings, engine_lib.LocalEngine(workers=1))
    beam = _read(window_settings, BeamEngine(PORTABLE, str(window_settings.monitor_path / "beam")))
    _assert_same_traffic(local, beam)
    # the whole pass on the portable runner: the same judgement and decision
    on_portable = dataclasses.replace(window_settings, monitor_engine="beam", beam_args=PORTABLE)
    _assert_same_judgement(monitor.monitor_once(window_settings, dry_run=True),
                           monitor.monitor_once(on_portable, dry_run=True))


def test_the_beam_engine_on_an_external_worker_pool(window_settings):
    """``beam_runner=portable``: a job service and an EXTERNAL worker pool started
    for the pass (``pipeline.portable``), whose workers have only the image's environment."""
    import dataclasses

    settings = dataclasses.replace(window_settings, monitor_engine="beam", beam_runner="portable")
    win = window_lib.open_window(window_lib.Checkpoint(settings.monitor_path), settings.request_logs_path,
                                 settings.monitor_max_files, persist=False)
    local = _read(window_settings, engine_lib.LocalEngine(workers=1))
    _assert_same_traffic(local, _read(settings, engine_lib.for_settings(settings, win.files)))


def test_a_failing_runner_is_a_monitor_error(window_settings):
    import dataclasses

    settings = dataclasses.replace(window_settings, monitor_engine="beam", beam_args=["--runner=NoSuchRunner"])
    with pytest.raises(monitor.MonitorError, match="monitor_engine=local"):
        monitor.monitor_once(settings, dry_run=True)
    settings = dataclasses.replace(settings, beam_args=[], beam_runner="portable", beam_job_endpoint="localhost:1")
    with pytest.raises(monitor.MonitorError, match="beam_job_endpoint"):
        monitor.monitor_once(settings, dry_run=True)


def test_the_engine_setting_and_flag(tmp_path, capsys):
    from core import config
    from tfxops import cli

    with pytest.raises(config.ConfigError, match="must be one of local, beam, got 'spark'"):
        config.load({"monitor_engine": "spark"})
    assert config.load({}).monitor_engine == "local"
    (tmp_path / "request_logs").mkdir()
    assert cli.main(["monitor", "--engine", "beam", "--home", str(tmp_path)]) == 0
    assert "no new requests" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["monitor", "--engine", "spark", "--home", str(tmp_path)])
    assert "invalid choice: 'spark' (choose from 'local', 'beam')" in capsys.readouterr().err


def test_examples_off_the_schema_are_read_with_inferred_types_by_both(tmp_path, e2e_settings, first_run, taxi_rows):
    """A feature the schema does not know: both engines read the window again with
    inferred types, so its statistics hold what was logged."""
    import tensorflow as tf

    settings = monitor_settings(tmp_path, e2e_settings, first_run)
    records = log_records(_requests(taxi_rows[SMALL_ROWS:SMALL_ROWS + 300]), int(first_run.pushed_version))
    for record in records[::2]:
        tensor = record.predict_log.request.inputs["examples"]
        examples = [tf.train.Example.FromString(s) for s in tensor.string_val]
        for example in examples:
            example.features.feature["surge_multiplier"].float_list.value.append(1.5)
        del tensor.string_val[:]
        tensor.string_val.extend(e.SerializeToString() for e in examples)
    write_logs(settings.request_logs_path, records, rotate_records=50)
    local = _read(settings, engine_lib.LocalEngine(workers=1))
    beam = _read(settings, BeamEngine([], str(tmp_path / "beam")))
    ((key, mine),) = local.versions.items()
    theirs = beam.versions[key]
    assert checks.feature_stats(theirs.stats.result(), "surge_multiplier") is not None
    _assert_same_statistics(mine.stats.result(), theirs.stats.result(), key)
    assert (theirs.rows, theirs.requests) == (mine.rows, mine.requests) == (300, len(records))
