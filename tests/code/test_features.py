"""The label rule (core.features.is_big_tipper) gives the same answer on TensorFlow
tensors, as Transform computes the label, and on numpy arrays, as the monitor labels
the requests whose tips came back."""
import numpy as np
import tensorflow as tf

from core import features as F
from monitoring.checks import labels_from_rows

NAN = float("nan")
# tips, fare, big tipper?  (a missing tip is NaN: never a big tip)
CASES = [(NAN, 10.0, False), (0.0, 0.0, False), (1.0, 0.0, True), (2.0, 10.0, False),
         (2.01, 10.0, True), (5.0, 10.0, True), (0.0, 10.0, False), (NAN, 0.0, False)]


def _columns(dtype):
    tips, fare, expected = zip(*CASES)
    return np.array(tips, dtype), np.array(fare, dtype), list(expected)


def test_the_rule_on_numpy_arrays():
    tips, fare, expected = _columns(np.float64)
    assert F.is_big_tipper(tips, fare).tolist() == expected


def test_the_rule_on_tensors_as_transform_applies_it():
    tips, fare, expected = _columns(np.float32)
    assert F.is_big_tipper(tf.constant(tips), tf.constant(fare)).numpy().tolist() == expected


def test_monitoring_labels_take_a_missing_fare_as_zero():
    """As Transform fills a missing fare with its default value, 0."""
    tips = np.array([1.0, 0.0, NAN, 1.0])
    fare = np.array([NAN, NAN, NAN, 10.0])
    assert labels_from_rows(tips, fare).tolist() == [1, 0, 0, 0]
    assert labels_from_rows(tips, fare).dtype == np.int8
