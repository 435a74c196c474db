"""TFX Trainer module: a small wide-and-deep Keras model and its serving signatures.

The exported SavedModel has three signatures (names in ``core.features``):

* ``serving_default``: serialized ``tf.Example`` strings (input ``examples``) in,
  ``probabilities`` out. What TF Serving's gRPC clients and TFMA send.
* ``serving_raw``: one tensor per raw feature (input names = feature names), so a
  REST caller can post plain JSON rows. Missing values are sent as 0 / "".
* ``transform_features``: serialized examples in, transformed features out (TFMA
  uses it to compute the label).
"""
from typing import Dict, List

from core.env import set_process_environment, skip_autograph_for_libraries

set_process_environment()   # this module is where a Beam worker enters tfxops code

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
from tfx import v1 as tfx  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from core import features as F  # noqa: E402
from core.config import Settings  # noqa: E402

skip_autograph_for_libraries()


def _input_fn(file_pattern: List[str], data_accessor: tfx.components.DataAccessor,
              tf_transform_output: tft.TFTransformOutput, batch_size: int) -> tf.data.Dataset:
    """Batches of (model inputs, label) from raw examples, transformed on the fly
    by the Transform graph (Transform does not write a transformed copy)."""
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size),
        tf_transform_output.raw_metadata.schema)
    tft_layer = tf_transform_output.transform_features_layer()

    def transform(raw):
        transformed = tft_layer(raw)
        return _as_columns(transformed), transformed[F.TRANSFORMED_LABEL_KEY]

    return dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE).repeat().prefetch(2)


def _as_columns(transformed: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Model inputs as [batch, 1] tensors, label and unused features dropped."""
    return {F.transformed_name(k): tf.reshape(transformed[F.transformed_name(k)], [-1, 1])
            for k in F.MODEL_FEATURES}


def category_sizes(tf_transform_output: tft.TFTransformOutput) -> Dict[str, int]:
    sizes = {k: F.FEATURE_BUCKET_COUNT + 1 for k in F.BUCKET_FEATURES}
    sizes.update({k: tf_transform_output.vocabulary_size_by_name(k) + F.OOV_SIZE
                  for k in F.VOCAB_FEATURES})
    sizes.update(F.CATEGORICAL_INT_FEATURES)
    sizes.update({k: F.HASH_BUCKETS for k in F.HASHED_FEATURES})
    return sizes


def build_model(category_sizes: Dict[str, int], hparams: Dict) -> tf.keras.Model:
    """Wide (one-hot categories) and deep (dense + categories) binary classifier."""
    inputs, dense, one_hots = {}, [], []
    for key in F.DENSE_FLOAT_FEATURES:
        name = F.transformed_name(key)
        inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.float32)
        dense.append(inputs[name])
    for key, size in category_sizes.items():
        name = F.transformed_name(key)
        inputs[name] = tf.keras.layers.Input(shape=(1,), name=name, dtype=tf.int64)
        one_hots.append(tf.keras.layers.CategoryEncoding(
            num_tokens=size, output_mode="one_hot", name=name + "_onehot")(inputs[name]))
    wide = tf.keras.layers.concatenate(one_hots)
    deep = tf.keras.layers.concatenate(dense + one_hots)
    for units in hparams["hidden_units"]:
        deep = tf.keras.layers.Dense(units, activation="relu")(deep)
    logit = tf.keras.layers.add([tf.keras.layers.Dense(1)(deep), tf.keras.layers.Dense(1)(wide)])
    output = tf.keras.layers.Activation("sigmoid")(logit)
    model = tf.keras.Model(inputs=inputs, outputs=output)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=hparams["learning_rate"]),
        loss="binary_crossentropy",
        metrics=[tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.BinaryAccuracy()])
    return model


def _raw_input_spec(raw_feature_spec) -> Dict[str, tf.TensorSpec]:
    return {k: tf.TensorSpec([None], raw_feature_spec[k].dtype, name=k)
            for k in F.MODEL_FEATURES}


def serving_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput):
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    serving_spec = {k: v for k, v in raw_spec.items() if k != F.LABEL_KEY}

    def predict(raw_features):
        transformed = model.tft_layer(raw_features)
        return {F.PREDICTION_KEY: tf.reshape(model(_as_columns(transformed)), [-1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized):
        return predict(tf.io.parse_example(serialized, serving_spec))

    @tf.function(input_signature=[_raw_input_spec(raw_spec)])
    def serve_raw(raw):
        # Optional features are VarLen (sparse) in the schema; Transform fills the
        # dropped zeros / empty strings back in with the same defaults.
        parsed = {}
        for key, value in raw.items():
            if isinstance(raw_spec[key], tf.io.VarLenFeature):
                parsed[key] = tf.sparse.from_dense(tf.expand_dims(value, 1))
            else:
                parsed[key] = tf.reshape(value, [-1] + list(raw_spec[key].shape))
        return predict(parsed)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    return {
        F.DEFAULT_SIGNATURE: serve_examples,
        F.RAW_SIGNATURE: serve_raw.get_concrete_function(),
        F.TRANSFORM_SIGNATURE: transform_features,
    }


def run_fn(fn_args: tfx.components.FnArgs):
    """TFX Trainer entry point."""
    # the pipeline passes the settings' hyperparameters through custom_config
    hparams = dict(Settings().hparams, **(fn_args.custom_config or {}))
    tf.keras.utils.set_random_seed(int(hparams["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = int(hparams["batch_size"])
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evals = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)

    model = build_model(category_sizes(tf_transform_output), hparams)
    model.fit(train, steps_per_epoch=fn_args.train_steps, epochs=1,
              validation_data=evals, validation_steps=fn_args.eval_steps, verbose=2)
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=serving_signatures(model, tf_transform_output))
