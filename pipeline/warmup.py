"""The warm-up requests a push writes into the version (``core.warmup``: TF Serving's
``assets.extra/tf_serving_warmup_requests``), from a few rows of the evaluation split.

The AtomicPusher (``pipeline.pusher``) takes the ExampleGen's Examples as its
optional ``examples`` input and, through ``stager``, writes the file into the
staged version with the model card and the input domain, before the integrity
manifest is computed, so the manifest covers it. The InfraValidator
(``pipeline.infra_validation``) builds the same file from the same rows
(``eval_examples``) into the copy it validates. A monitoring re-push
(``monitoring.act``) finds the examples the model was evaluated on through MLMD
(``stager_for_model``) and stages the file the same way.

The rows are the first ``count`` tf.Examples of the eval split (the files in name
order), label removed, as a caller sends them: the same rows for the same
artifact, so the validated file and the pushed one are the same. The features the
request logs redact (``core.redact``: ``log_drop_features``, ``log_hash_features``)
are redacted in them too, as every pushed version carries the file: each holds the
value a missing entry stands for (``core.features.default_value``: 0 or an empty
string, what Transform fills in), so the file holds none of their values and every
signature still takes the row (a model input cannot be left out: a required feature
missing fails the parse). A hashed feature is not hashed here: its hash would need
the salt in the pipeline's environment and, for the model, is a value it never saw
in training, as unhelpful to warm it as the neutral value.
"""
import logging
from typing import Collection, List, Optional

from core import features as F
from core import mlmd, redact, storage, warmup
from core.pushdir import Stager
from core.storage import Location

PUSHER_INPUT_KEY = "examples"           # the AtomicPusher's optional input
WARMUP_EXAMPLES_KEY = "warmup_examples"  # the AtomicPusher's exec property: rows per signature
REDACTED_KEY = "warmup_redacted_features"  # the AtomicPusher's exec property: ``redacted_names``
WARMUP_SPLIT = "eval"

log = logging.getLogger("tfxops.pipeline")


class WarmupExamplesError(RuntimeError):
    """The evaluation split cannot be read; the message names it."""


def redacted_names(settings) -> str:
    """The features the warm-up rows redact, as the components' parameter: comma-separated."""
    return ",".join(sorted(redact.redacted_features(settings)))


def names_of(parameter: Optional[str]) -> List[str]:
    """``redacted_names``'s features again."""
    return [name for name in (parameter or "").split(",") if name]


def eval_examples(examples_uri: Location, count: int, redacted: Collection[str] = ()) -> List[bytes]:
    """The first ``count`` serialized tf.Examples of the eval split of the Examples
    artifact at ``examples_uri`` (TFX's layout: ``Split-eval/*.gz``), label removed,
    the ``redacted`` features set to their neutral value (see the module docstring)."""
    import tensorflow as tf

    if count <= 0:
        return []
    pattern = str(storage.join(examples_uri, f"Split-{WARMUP_SPLIT}", "*"))
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise WarmupExamplesError(f"no examples in the '{WARMUP_SPLIT}' split at {pattern}")
    try:
        records = [record.numpy() for record in
                   tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)]
    except tf.errors.OpError as exc:
        raise WarmupExamplesError(f"cannot read the '{WARMUP_SPLIT}' split at {pattern}: {exc.message}") from None
    return [_as_sent(record, redacted) for record in records]


def _as_sent(serialized: bytes, redacted: Collection[str]) -> bytes:
    """An eval row without its label, its present ``redacted`` features neutral."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    features = example.features.feature
    if F.LABEL_KEY in features:
        del features[F.LABEL_KEY]
    for name in redacted:
        if name in features:
            features[name].CopyFrom(_neutral(name))
    return example.SerializeToString(deterministic=True)      # the same bytes in every process


def _neutral(name: str):
    """The feature holding ``name``'s default value, in its raw type."""
    import tensorflow as tf

    kind, value = F.column_type(name), F.default_value(name)
    if kind == "string":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def stager(serialized_examples: List[bytes]) -> Stager:
    """A ``core.pushdir.publish_atomically`` stager: the warm-up file of the staged model."""
    def stage(staging: Location, version: int) -> None:
        del version
        written = warmup.write_warmup_requests(staging, serialized_examples)
        log.info("%d warm-up requests written into the version (%s)", written, warmup.WARMUP_FILE)
    return stage


def examples_for_model(store, model_id: int):
    """The newest Examples artifact a completed execution read beside the Model
    ``model_id`` (its Pusher's, Evaluator's): the data it was evaluated on; None if none."""
    found = [artifact for execution in mlmd.consumers(store, int(model_id), "model") if mlmd.is_complete(execution)
             for artifact in mlmd.input_artifacts(store, execution.id).get(PUSHER_INPUT_KEY, [])]
    return max(found, key=lambda artifact: artifact.id, default=None)


def stager_for_model(settings, model_id: int) -> Optional[Stager]:
    """The warm-up stager of a re-push of the Model ``model_id``; None (and a warning)
    when ``warmup_examples`` is 0 or its evaluation rows cannot be found or read."""
    if settings.warmup_examples <= 0:
        return None
    try:
        found = examples_for_model(mlmd.open_store(settings), model_id)
        if found is None:
            log.warning("the re-pushed model %s gets no warm-up requests: no evaluation data recorded", model_id)
            return None
        return stager(eval_examples(found.uri, settings.warmup_examples, redact.redacted_features(settings)))
    except (mlmd.MetadataError, WarmupExamplesError) as exc:
        log.warning("the re-pushed model %s gets no warm-up requests: %s", model_id, exc)
        return None
