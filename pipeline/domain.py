"""InputDomainGen: the input domain of the data a candidate is trained on
(``core.domain``), computed in the pipeline so that every pushed version carries it.

It reads StatisticsGen's statistics (the ``train`` split) and the curated schema
(ImportSchemaGen) and writes one ``InputDomain`` artifact (``ARTIFACT_TYPE``)
holding ``input_domain.json``. The Pusher (``pipeline.pusher``) takes it as its
optional ``input_domain`` input and writes the file into the staged version,
``<version>/core.domain.DOMAIN_FILE``, through a stager (``stager``) run with the
model card's, before the version is published; the integrity manifest, written
after every stager, covers it. A monitoring re-push (``monitoring.act``) finds the
domain the model was pushed with through MLMD (``artifact_for_model``) and stages
it the same way.

Its inputs are the statistics and the schema, its parameters the margin and the
fingerprint of the code: a rerun on unchanged data, schema and code reuses it
from the cache.
"""
import logging
from typing import Optional

from tfx import v1 as tfx
from tfx.types import artifact_utils

from core import domain, mlmd, storage
from core.pushdir import Stager
from core.storage import Location

ARTIFACT_TYPE = "tfxops.InputDomain"          # KFP v2 wants a custom type name "<namespace>.<Name>"
ARTIFACT_FILE = "input_domain.json"
PUSHER_INPUT_KEY = "input_domain"             # the AtomicPusher's input

log = logging.getLogger("tfxops.pipeline")


class InputDomainArtifact(tfx.dsl.Artifact):
    """A candidate's input domain: ``<uri>/input_domain.json`` (``core.domain``)."""
    TYPE_NAME = ARTIFACT_TYPE


class DomainArtifactError(RuntimeError):
    """An InputDomain artifact whose file cannot be read; the message names it."""


def read(uri: Location) -> domain.InputDomain:
    """The domain saved in an InputDomain artifact's directory."""
    path = storage.join(uri, ARTIFACT_FILE)
    try:
        return domain.InputDomain.from_json(storage.read_text(path))
    except OSError as exc:
        raise DomainArtifactError(f"cannot read the input domain {path} ({exc.strerror or 'unreadable'}); "
                                  "rerun the pipeline (its InputDomainGen writes it)") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DomainArtifactError(f"the input domain {path} is not a domain file; "
                                  "rerun the pipeline (its InputDomainGen writes it)") from None


def stager(found: domain.InputDomain) -> Stager:
    """A ``core.pushdir.publish_atomically`` stager: ``found`` into the staged version."""
    def stage(staging: Location, version: int) -> None:
        del version
        domain.write_domain(staging, found)
    return stage


def artifact_for_model(store, model_id: int):
    """The newest InputDomain artifact a completed push of the Model ``model_id`` read
    (the Pusher's ``input_domain``); None if none did."""
    found = [artifact for execution in mlmd.consumers(store, int(model_id), "model") if mlmd.is_complete(execution)
             for artifact in mlmd.input_artifacts(store, execution.id).get(PUSHER_INPUT_KEY, [])]
    return max(found, key=lambda artifact: artifact.id, default=None)


def stager_for_model(settings, model_id: int) -> Optional[Stager]:
    """The stager of the domain the Model ``model_id`` was pushed with (MLMD, ``artifact_for_model``),
    for a re-push of it; None (and a warning) when it was pushed without one or it cannot be read."""
    try:
        found = artifact_for_model(mlmd.open_store(settings), model_id)
        return None if found is None else stager(read(found.uri))
    except (mlmd.MetadataError, DomainArtifactError) as exc:
        log.warning("the re-pushed model %s gets no input domain: %s", model_id, exc)
        return None


def combined(*stagers: Optional[Stager]) -> Optional[Stager]:
    """One stager running each given one in turn; None when none is given."""
    present = [stage for stage in stagers if stage is not None]
    if not present:
        return None

    def stage(staging: Location, version: int) -> None:
        for each in present:
            each(staging, version)
    return stage


@tfx.dsl.components.component
def InputDomainGen(
        statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
        schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
        input_domain: tfx.dsl.components.OutputArtifact[InputDomainArtifact],
        margin: tfx.dsl.components.Parameter[float],
        code_fingerprint: tfx.dsl.components.Parameter[str] = ""):
    """The input domain of the training split (``core.domain.from_statistics``);
    ``code_fingerprint`` only keys the cache to the code."""
    import tensorflow_data_validation as tfdv

    del code_fingerprint
    split_uri = artifact_utils.get_split_uri([statistics], "train")
    stats = tfdv.load_stats_binary(str(storage.join(split_uri, "FeatureStats.pb"))).datasets[0]
    curated = tfdv.load_schema_text(str(storage.join(schema.uri, "schema.pbtxt")))
    found = domain.from_statistics(stats, curated, margin)
    storage.makedirs(input_domain.uri)
    storage.write_text(storage.join(input_domain.uri, ARTIFACT_FILE), found.to_json())
    input_domain.set_string_custom_property("checked", ",".join(found.names))
    input_domain.set_string_custom_property("unchecked", ",".join(sorted(found.unchecked)))
