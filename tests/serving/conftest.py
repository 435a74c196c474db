"""Serving fixtures: a push directory holding a copy of the pipeline's pushed model,
and real servers on free 127.0.0.1 ports."""
import shutil

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from core.ports import free_port
from serving.server import BackgroundServer
from core import config
from core.examples import read_csv_rows


def copy_version(src, push_dir, version):
    push_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, push_dir / str(version))
    return version


def serving_settings(tmp, **overrides):
    values = {"home": str(tmp), "serving_dir": str(tmp / "serving_model"),
              "rest_port": str(free_port()), "grpc_port": str(free_port()),
              "poll_seconds": "0.2", "request_log_dir": str(tmp / "request_logs")}
    values.update({k: str(v) for k, v in overrides.items()})
    return config.load(values)


@pytest.fixture(scope="session")
def pushed_model(first_run):
    assert first_run.pushed_path, "the pipeline's first run pushed no model"
    return first_run.pushed_path


@pytest.fixture(scope="session")
def rows(e2e_settings):
    from pathlib import Path
    return list(read_csv_rows(str(Path(e2e_settings.data_dir) / "data.csv")))[:50]


@pytest.fixture(scope="module")
def served(tmp_path_factory, pushed_model):
    """One server (batching and logging on) for the conformance tests of a module."""
    tmp = tmp_path_factory.mktemp("served")
    settings = serving_settings(tmp, log_rotate_records=5)
    copy_version(pushed_model, settings.model_push_dir, 7)
    server = BackgroundServer(settings)
    server.start()
    server.settings = settings
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(served):
    """A gRPC channel to the module's ``served`` server."""
    ch = grpc.insecure_channel(f"127.0.0.1:{served.ports.grpc}")
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


WAITER = "waiter"


def waiter_settings(tmp, **overrides):
    """Settings serving ``waiting_model`` (copy it with ``copy_version``); without
    batching, so that a call the model holds blocks no other."""
    return serving_settings(tmp, model_name=WAITER, enable_batching=False, **overrides)


@pytest.fixture(scope="session")
def waiting_model(tmp_path_factory):
    """A real SavedModel whose ``serving_default`` takes file paths and answers,
    for each, once a file matches it (at once for a file that exists), how many
    10 ms naps it waited: a call kept in the model for as long as a test wants."""
    import tensorflow as tf
    # tf.data's sleep transformation: a graph op that waits without using the CPU
    from tensorflow.python.data.experimental.ops.testing import sleep

    def nap():
        return tf.data.Dataset.range(1).apply(sleep(10_000)).reduce(
            tf.constant(0, tf.int64), lambda total, x: total + x)

    def wait_for(path):
        return tf.while_loop(lambda n: tf.equal(tf.size(tf.io.matching_files(path)), 0),
                             lambda n: [n + 1 + nap()], [tf.constant(0, tf.int64)])[0]

    class Waiter(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="path")])
        def serve(self, path):
            return {"naps": tf.map_fn(wait_for, path, fn_output_signature=tf.int64)}

    directory = tmp_path_factory.mktemp("waiting_model") / "1"
    module = Waiter()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory
