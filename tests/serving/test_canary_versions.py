"""A candidate version for the canary, shadow, agreement and promote tests: the
pipeline's pushed model with its wide part's output bias raised, so the two
versions' scores and some of their decisions differ (written with TensorFlow's
own SaveV2 and covered by a fresh integrity manifest, as a push would)."""
import shutil
from pathlib import Path

from core import integrity

WIDE_BIAS = "layer_with_weights-3/bias/.ATTRIBUTES/VARIABLE_VALUE"
BIAS_SHIFT = 1.5        # a logit shift: P(big tip) up for every trip


def make_candidate(source: Path, push_dir: Path, version: int, shift: float = BIAS_SHIFT) -> int:
    """Copy the SavedModel at ``source`` to ``push_dir/version`` with ``WIDE_BIAS`` + ``shift``."""
    import tensorflow as tf

    target = Path(push_dir) / str(version)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("variables"))
    (target / "variables").mkdir()
    reader = tf.train.load_checkpoint(str(Path(source) / "variables" / "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    names = sorted(dtypes)
    tensors = [tf.constant(reader.get_tensor(name) + shift if name == WIDE_BIAS else reader.get_tensor(name),
                           dtype=dtypes[name]) for name in names]
    tf.raw_ops.SaveV2(prefix=str(target / "variables" / "variables"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=tensors)
    integrity.write_manifest(str(target), None, str(version), Path(push_dir).name)
    return version


def test_candidate_differs_only_in_its_bias_and_passes_integrity(pushed_model, tmp_path):
    import tensorflow as tf

    push_dir = tmp_path / "taxi"
    push_dir.mkdir()
    make_candidate(pushed_model, push_dir, 2)
    checked = integrity.verify_version(str(push_dir / "2"), None, require_manifest=True)
    assert checked.ok and checked.has_manifest, checked.problems
    before = tf.train.load_checkpoint(str(Path(pushed_model) / "variables" / "variables"))
    after = tf.train.load_checkpoint(str(push_dir / "2" / "variables" / "variables"))
    assert abs(float(after.get_tensor(WIDE_BIAS)[0] - before.get_tensor(WIDE_BIAS)[0]) - BIAS_SHIFT) < 1e-6
    kernel = "layer_with_weights-3/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert (after.get_tensor(kernel) == before.get_tensor(kernel)).all()
