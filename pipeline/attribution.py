"""FeatureAttributor: the candidate model's per-feature attributions, computed in the
pipeline so that every pushed model has them, linked to it in MLMD.

It reads the Trainer's model and CsvExampleGen's examples and writes one
``FeatureAttributions`` artifact (``core.attribution.ARTIFACT_TYPE``) holding
``attributions.json``: sampled Shapley attributions (``core.attribution``) of
``rows`` rows of the evaluation split, against ``background_rows`` rows of the
training split, ``samples`` permutations per row, drawn with ``seed``. The
background rows are kept in the artifact: the monitor explains each window's
served rows against the same background (``monitoring.attribution_drift``), so
the two rankings differ only by the rows explained.

The rows are drawn uniformly (seeded) from the first ``SCAN_FACTOR`` times as
many records of the split, in file order: the cost of reading stays bounded on a
large split, at the price of a sample of its beginning.

The Pusher waits for it (``pipeline.pipeline``): a model is pushed with its
attributions or not at all. Its only inputs are the model and the examples, and
its parameters the settings and the fingerprint of the code that computes them:
a rerun on unchanged data and code reuses it from the cache, like the Trainer.
"""
from typing import Dict, List

from tfx import v1 as tfx
from tfx.types import standard_artifact_utils
from tfx.utils import path_utils

from core import attribution, storage
from core import features as F

SCAN_FACTOR = 20         # records read from a split per row drawn from it


class FeatureAttributions(tfx.dsl.Artifact):
    """A model's per-feature attributions: ``<uri>/attributions.json`` (``core.attribution``)."""
    TYPE_NAME = attribution.ARTIFACT_TYPE


def sample_rows(examples: tfx.types.standard_artifacts.Examples, split: str, count: int, seed: int) -> List[Dict]:
    """``count`` raw rows (label dropped) drawn uniformly with ``seed`` from the first
    ``SCAN_FACTOR * count`` tf.Examples of ``split`` (fewer if the split is smaller)."""
    import numpy as np
    import tensorflow as tf

    from core.examples import example_to_row

    pattern = storage.join(standard_artifact_utils.get_split_uri([examples], split), "*")
    files = sorted(tf.io.gfile.glob(str(pattern)))
    if not files:
        raise attribution.AttributionError(f"no examples in the '{split}' split at {pattern}")
    records = [record.numpy() for record in
               tf.data.TFRecordDataset(files, compression_type="GZIP").take(SCAN_FACTOR * count)]
    chosen = np.sort(np.random.default_rng(seed).permutation(len(records))[:count])
    rows = [example_to_row(tf.train.Example.FromString(records[i])) for i in chosen]
    for row in rows:
        row.pop(F.LABEL_KEY, None)
    return rows


@tfx.dsl.components.component
def FeatureAttributor(
        model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
        examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
        attributions: tfx.dsl.components.OutputArtifact[FeatureAttributions],
        rows: tfx.dsl.components.Parameter[int],
        background_rows: tfx.dsl.components.Parameter[int],
        samples: tfx.dsl.components.Parameter[int],
        seed: tfx.dsl.components.Parameter[int],
        code_fingerprint: tfx.dsl.components.Parameter[str] = ""):
    """Attributions of ``model`` on ``rows`` evaluation rows against ``background_rows``
    training rows (none when ``rows`` is 0); ``code_fingerprint`` only keys the cache
    to the code."""
    del code_fingerprint
    found = attribution.Attributions(attribution.METHOD, 0, {})      # attribution_rows=0: off
    if rows > 0:
        explained = sample_rows(examples, "eval", rows, seed)
        background = sample_rows(examples, "train", background_rows, seed)
        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        found = attribution.compute(model_dir, explained, background, samples=samples, seed=seed)
    attribution.save(found, attributions.uri)
    ranking = found.ranking()
    attributions.set_string_custom_property("method", found.method)
    attributions.set_int_custom_property("rows", found.rows)
    attributions.set_string_custom_property("ranking", ",".join(ranking))
    attributions.set_string_custom_property(
        "top_shares", ", ".join(f"{name} {found.shares()[name]:.3f}" for name in ranking[:5]))
