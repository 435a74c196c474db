"""TFX Transform module: ``preprocessing_fn`` turns raw taxi features into model inputs.

The feature lists come from ``core.features``; nothing here names a column.
"""
from core.env import set_process_environment, skip_autograph_for_libraries

set_process_environment()   # this module is where a Beam worker enters tfxops code

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from core import features as F  # noqa: E402

skip_autograph_for_libraries()


def _dense(x, default):
    """A [batch] dense tensor from a raw input, missing entries set to ``default``.

    Optional features arrive as SparseTensor [batch, 1] (VarLenFeature); required
    ones as dense [batch] or [batch, 1].
    """
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]),
            default_value=default)
    if x.shape.rank is not None and x.shape.rank > 1:
        x = tf.squeeze(x, axis=1)
    return x


def preprocessing_fn(inputs):
    """tf.Transform callback: raw feature dict in, transformed feature dict out."""
    outputs = {}
    for key in F.DENSE_FLOAT_FEATURES:
        value = tf.cast(_dense(inputs[key], F.default_value(key)), tf.float32)
        outputs[F.transformed_name(key)] = tft.scale_to_z_score(value)

    for key in F.BUCKET_FEATURES:
        value = tf.cast(_dense(inputs[key], F.default_value(key)), tf.float32)
        outputs[F.transformed_name(key)] = tft.bucketize(value, F.FEATURE_BUCKET_COUNT)

    for key in F.VOCAB_FEATURES:
        value = _dense(inputs[key], F.default_value(key))
        outputs[F.transformed_name(key)] = tft.compute_and_apply_vocabulary(
            value, top_k=F.VOCAB_SIZE, num_oov_buckets=F.OOV_SIZE,
            vocab_filename=key)

    for key, size in F.CATEGORICAL_INT_FEATURES.items():
        value = tf.cast(_dense(inputs[key], F.default_value(key)), tf.int64)
        outputs[F.transformed_name(key)] = tf.clip_by_value(value, 0, size - 1)

    for key in F.HASHED_FEATURES:
        value = tf.strings.as_string(
            tf.cast(_dense(inputs[key], F.default_value(key)), tf.int64))
        outputs[F.transformed_name(key)] = tf.strings.to_hash_bucket_fast(
            value, F.HASH_BUCKETS)

    # The target (core.features.is_big_tipper); a missing tip is NaN: not a big tip.
    tips = tf.cast(_dense(inputs[F.LABEL_KEY], float("nan")), tf.float32)
    fare = tf.cast(_dense(inputs[F.FARE_KEY], F.default_value(F.FARE_KEY)), tf.float32)
    outputs[F.TRANSFORMED_LABEL_KEY] = tf.cast(F.is_big_tipper(tips, fare), tf.int64)
    return outputs
