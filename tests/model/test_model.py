"""The Keras model and its exported signatures, on the Transform output of a few
hundred rows: both serving signatures give the same probabilities in [0, 1]."""
import numpy as np
import pytest
import tensorflow as tf

from core import features as F
from core.config import Settings
from modules import trainer
from core.examples import row_to_example


@pytest.fixture(scope="module")
def exported(tmp_path_factory, transformed):
    output, records = transformed
    model = trainer.build_model(trainer.category_sizes(output),
                                dict(Settings().hparams, hidden_units=[8]))
    x = {F.transformed_name(k): np.array([[r[F.transformed_name(k)]] for r in records])
         for k in F.MODEL_FEATURES}
    y = np.array([r[F.TRANSFORMED_LABEL_KEY] for r in records])
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    path = str(tmp_path_factory.mktemp("model") / "1")
    model.save(path, save_format="tf", signatures=trainer.serving_signatures(model, output))
    return tf.saved_model.load(path), history


def test_training_reduces_the_loss(exported):
    _, history = exported
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def test_signatures_and_their_inputs(exported):
    model, _ = exported
    assert set(model.signatures) == {F.DEFAULT_SIGNATURE, F.RAW_SIGNATURE, F.TRANSFORM_SIGNATURE}
    default_inputs = model.signatures[F.DEFAULT_SIGNATURE].structured_input_signature[1]
    assert list(default_inputs) == ["examples"] and default_inputs["examples"].dtype == tf.string
    raw_inputs = model.signatures[F.RAW_SIGNATURE].structured_input_signature[1]
    assert set(raw_inputs) == set(F.MODEL_FEATURES)
    assert raw_inputs["payment_type"].dtype == tf.string
    assert raw_inputs["trip_start_hour"].dtype == tf.int64
    assert raw_inputs["fare"].dtype == tf.float32


def _raw_tensors(rows):
    tensors = {}
    for key in F.MODEL_FEATURES:
        values = [r[key] if r[key] != "" else F.default_value(key) for r in rows]
        kind = F.column_type(key)
        if kind == "string":
            tensors[key] = tf.constant([str(v) for v in values])
        elif kind == "int":
            tensors[key] = tf.constant([int(float(v)) for v in values], tf.int64)
        else:
            tensors[key] = tf.constant([float(v) for v in values], tf.float32)
    return tensors


def test_both_serving_signatures_agree(exported, taxi_rows):
    model, _ = exported
    rows = taxi_rows[1000:1064]      # includes rows with missing values
    assert any(r["company"] == "" for r in rows)
    examples = tf.constant([row_to_example(r, F.SERVING_FEATURES).SerializeToString() for r in rows])
    by_example = model.signatures[F.DEFAULT_SIGNATURE](examples=examples)[F.PREDICTION_KEY].numpy()
    by_raw = model.signatures[F.RAW_SIGNATURE](**_raw_tensors(rows))[F.PREDICTION_KEY].numpy()
    assert by_example.shape == (64,)
    assert np.all((by_example >= 0) & (by_example <= 1))
    np.testing.assert_allclose(by_example, by_raw, atol=1e-6)


def test_label_is_not_needed_to_serve(exported, taxi_rows):
    model, _ = exported
    rows = taxi_rows[:3]
    examples = tf.constant([row_to_example(r, F.SERVING_FEATURES).SerializeToString() for r in rows])
    assert F.LABEL_KEY not in F.SERVING_FEATURES
    out = model.signatures[F.DEFAULT_SIGNATURE](examples=examples)[F.PREDICTION_KEY].numpy()
    assert out.shape == (3,)


def test_transform_features_signature_gives_the_label(exported, taxi_rows):
    model, _ = exported
    rows = taxi_rows[:5]
    examples = tf.constant([row_to_example(r).SerializeToString() for r in rows])
    out = model.signatures[F.TRANSFORM_SIGNATURE](examples=examples)
    expected = [int(float(r["tips"]) > 0.2 * float(r["fare"])) for r in rows]
    assert list(out[F.TRANSFORMED_LABEL_KEY].numpy().reshape(-1)) == expected
