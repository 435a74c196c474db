"""preprocessing_fn: every model feature is produced, encodings stay in range, the
label is tips > 20% of the fare."""
import numpy as np

from core import features as F


def test_outputs_every_model_feature_and_the_label(transformed):
    output, records = transformed
    names = set(output.transformed_feature_spec())
    assert names == {F.transformed_name(k) for k in F.MODEL_FEATURES} | {F.TRANSFORMED_LABEL_KEY}
    assert len(records) == 400


def test_label_matches_the_definition(transformed, transform_rows):
    _, records = transformed
    f32 = np.float32     # the comparison as TensorFlow makes it, in float32
    expected = sum(1 for r in transform_rows
                   if r["tips"] and f32(r["tips"]) > f32(r["fare"] or 0) * f32(F.TIP_FRACTION))
    assert sum(int(r[F.TRANSFORMED_LABEL_KEY]) for r in records) == expected
    assert 0 < expected < len(records)


def test_numeric_features_are_z_scored(transformed):
    _, records = transformed
    for key in F.DENSE_FLOAT_FEATURES:
        values = np.array([r[F.transformed_name(key)] for r in records], dtype=float)
        assert abs(values.mean()) < 1e-3 and abs(values.std() - 1) < 1e-2, key


def test_categorical_encodings_stay_in_range(transformed):
    output, records = transformed
    limits = {k: F.FEATURE_BUCKET_COUNT for k in F.BUCKET_FEATURES}
    limits.update({k: output.vocabulary_size_by_name(k) + F.OOV_SIZE for k in F.VOCAB_FEATURES})
    limits.update(F.CATEGORICAL_INT_FEATURES)
    limits.update({k: F.HASH_BUCKETS for k in F.HASHED_FEATURES})
    for key, limit in limits.items():
        values = [int(r[F.transformed_name(key)]) for r in records]
        assert min(values) >= 0 and max(values) < limit, key
    assert "Cash" in [v.decode() for v in output.vocabulary_by_name("payment_type")]
