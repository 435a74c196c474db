"""AtomicPusher: TFX's Pusher, but a model server never sees a half-written version,
and a push cut short by ``kill -9`` is recovered.

TFX's filesystem Pusher copies the SavedModel straight into
``<base>/<unix seconds>``; a server polling ``<base>`` (TF Serving or ours) can
find the numeric directory while files are still arriving. This executor copies
into a hidden, non-numeric sibling (``.incoming-<version>-<pid>``), then
(``core.pushdir.publish_atomically``), on a local disk, renames it to
``<version>`` in one atomic rename on the same filesystem; on an object store
(``gs://``, ``s3://``: no rename), copies it to ``<version>`` and writes the push
marker there last, and our readers list a version only once its marker is there
(docs/storage.md). Every file goes through ``core.storage`` (``tf.io.gfile`` for
a URI), so a ``gs://`` destination is written to the bucket, not to a local
directory named ``gs:``. On any error the partial copy is removed and nothing
appears under ``<base>``. The archive copy TFX keeps in the PushedModel's own uri
is made before, so publishing the version is the executor's last step.

Versions are unix seconds as in TFX, bumped past the newest existing version so
two pushes in one second, or a clock step back, never collide.

The PushedModel artifact gets TFX's custom properties (``pushed``,
``pushed_destination``, ``pushed_version``), so TFX's resolvers and our lineage
read it like any Pusher output.

With a ``model_card`` input (``pipeline.model_card.ModelCardGenerator``), the
card of the version (its number, path and this push's MLMD ids added) is written
into the staged copy, ``<version>/assets.extra/model_card/``, so it appears with
the version in the same publish; the PushedModel's custom property
``model_card`` names the JSON file. Likewise an ``input_domain`` input
(``pipeline.domain.InputDomainGen``) is written to ``<version>/core.domain.DOMAIN_FILE``
and named by the custom property ``input_domain``.

With a ``holdout_blessing`` input (``pipeline.holdout.HoldoutEvaluator``'s blessing),
a model is pushed only if that blessing is there, blessed, and judged this model;
else the PushedModel is marked not pushed and ``not_pushed_reason`` says why
(e.g. "trusted holdout: AUC 0.61 vs served 0.74, drop 0.13 > holdout_max_auc_drop 0.02").

With an ``examples`` input (the ExampleGen's), the version's warm-up requests
(TF Serving's ``assets.extra/tf_serving_warmup_requests``, ``pipeline.warmup``: the
first ``warmup_examples`` rows of the eval split, one request per row for each
signature the model serves) are written into the staged copy with the card and the
domain; the PushedModel's custom property ``warmup_requests`` names the file. With an
``infra_blessing`` input (``pipeline.infra_validation.InfraValidator``, as TFX's
Pusher takes TFX's), a model is pushed only if that blessing is blessed and judged
this model; else ``not_pushed_reason`` is its reason (e.g. "infra validation: the
candidate did not load in tfxops serve (state END): DATA_LOSS: ...").

Every version carries its manifest (``core.integrity``, written by
``publish_atomically`` after the card, domain and warm-up file), signed with the key in the
environment variable the exec property ``integrity_key_env`` names (setting
``model_integrity_key_env``) when the executor's environment holds one.

A Model that is already the newest version's (its push marker names the same
Model artifact: e.g. a rerun whose only change is the card's text or code, which
makes a new ModelCard and so a new Pusher input) is not pushed again: the
PushedModel is marked not pushed, its custom property ``already_pushed_version``
names that version and ``not_pushed_reason`` says "model already pushed as version
N". That version keeps the card it was published with: publishing an updated card
for a version already pushed is out of scope.

Killed mid-push. TFX records the PushedModel in MLMD only after ``Do`` returns,
so a ``kill -9`` between the rename and that record leaves a whole, blessed,
servable version with no lineage (TFX's own Pusher has the same gap, plus
half-copied versions). Before the rename, the executor writes a push marker
inside the staging directory (``core.pushdir.MARKER``: pid, host and start
time of the process, pipeline run id, node id, execution id, model and
PushedModel uris). ``pipeline.recovery.recover``, which every ``tfxops run`` calls
before it starts the pipeline (and anyone else may call), then:

* records a version whose Pusher is gone and whose marker names an execution
  still RUNNING in MLMD: the PushedModel is published as that execution's output
  with TFX's own publisher, the execution becomes COMPLETE (custom property
  ``tfxops_recovered`` says so), and, because the runner associates each
  execution with its cache context when it starts, the next run's Pusher is a
  cache hit instead of a second copy of the same model;
* moves any other unrecorded version that tfxops pushed (its pusher gone, no
  matching execution: e.g. a monitoring re-push killed before its record) to
  ``<base>/.orphaned-<version>``, where no server loads it;
* removes ``.incoming-*`` directories whose process is gone, and leaves alone
  whatever a live process (or a process on another host) is still writing, and
  versions without a marker (not pushed by tfxops).

Meanwhile a server serves the orphan, as TF Serving would: it is complete and was
blessed (the Pusher publishes only blessed models), and its marker names the run,
execution and model it came from; what is missing until the next run is the MLMD
record only. ``tfxops lineage model <version>`` says so and names the fix.
"""
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, channel, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, json_utils, proto_utils

from core import storage
from core.config import Settings
from core.domain import DOMAIN_FILE
from core.warmup import WARMUP_FILE
from core.pushdir import newest_version, publish_atomically, read_marker
from pipeline import domain as domain_lib
from pipeline import holdout as holdout_lib
from pipeline import infra_validation as infra_lib
from pipeline import model_card as card_lib
from pipeline import warmup as warmup_lib

MODEL_CARD_KEY = "model_card"
INTEGRITY_KEY_ENV_KEY = "integrity_key_env"   # exec property: the variable holding the manifest's key
ALREADY_PUSHED_KEY = "already_pushed_version"   # PushedModel: the version that already holds the model
NOT_PUSHED_REASON_KEY = "not_pushed_reason"
WARMUP_KEY = "warmup_requests"   # PushedModel: the version's warm-up file (core.warmup), when written


class AtomicPusherExecutor(pusher_executor.Executor):
    """Pusher executor with an atomic, collision-free filesystem push."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        refused = holdout_lib.pusher_refusal(input_dict) or infra_lib.pusher_refusal(input_dict)
        if refused is not None:
            logging.info("Not pushed: %s.", refused)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(NOT_PUSHED_REASON_KEY, refused)
            return
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("AtomicPusher pushes to a filesystem destination only")
        base = destination.filesystem.base_directory
        already = already_pushed_version(input_dict, base)
        if already is not None:
            reason = f"model already pushed as version {already}"
            logging.info("Not pushed: %s.", reason)
            self._MarkNotPushed(model_push)
            model_push.set_string_custom_property(ALREADY_PUSHED_KEY, str(already))
            model_push.set_string_custom_property(NOT_PUSHED_REASON_KEY, reason)
            return
        # The archive copy inside the pipeline root, as TFX's Pusher keeps it; first,
        # so that nothing is left to do after the version becomes visible.
        io_utils.copy_dir(model_path, model_push.uri)
        record = self._push_record(input_dict, model_push)
        card = self._card_stager(input_dict, base, model_push, record)
        domain = self._domain_stager(input_dict)
        warmup = self._warmup_stager(input_dict, exec_properties)
        version = publish_atomically(model_path, base, record, stage=domain_lib.combined(card, domain, warmup),
                                     integrity_key_env=exec_properties.get(INTEGRITY_KEY_ENV_KEY)
                                     or Settings.model_integrity_key_env)
        serving_path = str(storage.join(base, version))
        logging.info("Model published to %s.", serving_path)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)
        if card is not None:
            model_push.set_string_custom_property(
                MODEL_CARD_KEY, str(storage.join(serving_path, card_lib.CARD_DIR, card_lib.CARD_JSON)))
        if domain is not None:
            model_push.set_string_custom_property(
                domain_lib.PUSHER_INPUT_KEY, str(storage.join(serving_path, DOMAIN_FILE)))
        if warmup is not None and storage.exists(storage.join(serving_path, WARMUP_FILE)):
            model_push.set_string_custom_property(WARMUP_KEY, str(storage.join(serving_path, WARMUP_FILE)))

    def _warmup_stager(self, input_dict, exec_properties):
        """Writes the warm-up requests (``pipeline.warmup``) into the staged copy; None
        without an ``examples`` input or with ``warmup_examples`` 0."""
        found = input_dict.get(warmup_lib.PUSHER_INPUT_KEY) or []
        count = int(exec_properties.get(warmup_lib.WARMUP_EXAMPLES_KEY) or 0)
        if not found or count <= 0:
            return None
        redacted = warmup_lib.names_of(exec_properties.get(warmup_lib.REDACTED_KEY))
        return warmup_lib.stager(warmup_lib.eval_examples(found[0].uri, count, redacted))

    def _domain_stager(self, input_dict):
        """Writes the input domain (``pipeline.domain``) into the staged copy; None without one."""
        found = input_dict.get(domain_lib.PUSHER_INPUT_KEY) or []
        return domain_lib.stager(domain_lib.read(found[0].uri)) if found else None

    def _card_stager(self, input_dict, base: str, model_push: types.Artifact, record: Dict):
        """Writes the version's model card into the staged copy; None without a card input."""
        found = input_dict.get(MODEL_CARD_KEY) or []
        if not found:
            return None
        return card_lib.stager(card_lib.read(found[0].uri), base, {
            "artifact:model_card": found[0].id, "artifact:pushed_model": model_push.id,
            "execution:pusher": record.get("execution_id")})

    def _push_record(self, input_dict, model_push: types.Artifact) -> Dict[str, Any]:
        """What the push marker says about this push (pipeline.recovery matches it)."""
        model = (input_dict.get(standard_component_specs.MODEL_KEY) or [None])[0]
        record = {"model_uri": model and model.uri, "model_artifact_id": model and model.id,
                  "pushed_model_uri": model_push.uri}
        context = self._context
        if context is not None and context.pipeline_info is not None:
            unique_id = str(getattr(context, "_unique_id", "") or "")   # the execution id (TFX's operators)
            record.update(pipeline_name=context.pipeline_info.id, pipeline_run_id=context.pipeline_run_id,
                          node_id=context.pipeline_node.node_info.id if context.pipeline_node else None,
                          execution_id=int(unique_id) if unique_id.isdigit() else None)
        return record


def already_pushed_version(input_dict: Dict[str, List[types.Artifact]], base: str) -> Optional[int]:
    """The newest version under ``base`` when its push marker names the input Model
    artifact (its uri, and its id when the marker has one); None otherwise."""
    model = (input_dict.get(standard_component_specs.MODEL_KEY) or [None])[0]
    newest = newest_version(base)
    if model is None or newest is None:
        return None
    marker = read_marker(storage.join(base, str(newest))) or {}
    same = marker.get("model_uri") == model.uri and marker.get("model_artifact_id") in (None, model.id)
    return newest if same else None


class AtomicPusherSpec(standard_component_specs.PusherSpec):
    """TFX's Pusher spec plus the optional model card written into the version."""
    INPUTS = dict(standard_component_specs.PusherSpec.INPUTS,
                  **{MODEL_CARD_KEY: ChannelParameter(type=card_lib.ModelCard, optional=True),
                     domain_lib.PUSHER_INPUT_KEY: ChannelParameter(type=domain_lib.InputDomainArtifact,
                                                                   optional=True),
                     holdout_lib.HOLDOUT_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing,
                                                                        optional=True),
                     warmup_lib.PUSHER_INPUT_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True)})
    PARAMETERS = dict(standard_component_specs.PusherSpec.PARAMETERS,
                      **{INTEGRITY_KEY_ENV_KEY: ExecutionParameter(type=str, optional=True),
                         warmup_lib.WARMUP_EXAMPLES_KEY: ExecutionParameter(type=int, optional=True),
                         warmup_lib.REDACTED_KEY: ExecutionParameter(type=str, optional=True)})


class AtomicPusher(pusher_component.Pusher):
    """``tfx.components.Pusher`` with ``AtomicPusherExecutor`` and a ``model_card`` input."""

    SPEC_CLASS = AtomicPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)

    def __init__(self, model: channel.BaseChannel, model_blessing: channel.BaseChannel,
                 push_destination: pusher_pb2.PushDestination,
                 model_card: Optional[channel.BaseChannel] = None,
                 input_domain: Optional[channel.BaseChannel] = None,
                 holdout_blessing: Optional[channel.BaseChannel] = None,
                 integrity_key_env: str = Settings.model_integrity_key_env,
                 infra_blessing: Optional[channel.BaseChannel] = None,
                 examples: Optional[channel.BaseChannel] = None,
                 warmup_examples: int = Settings.warmup_examples, warmup_redacted_features: str = ""):
        spec = AtomicPusherSpec(model=model, model_blessing=model_blessing, push_destination=push_destination,
                                custom_config=json_utils.dumps(None), model_card=model_card,
                                input_domain=input_domain, holdout_blessing=holdout_blessing,
                                integrity_key_env=integrity_key_env, infra_blessing=infra_blessing,
                                examples=examples, warmup_examples=warmup_examples,
                                warmup_redacted_features=warmup_redacted_features,
                                pushed_model=channel.Channel(type=standard_artifacts.PushedModel))
        super(pusher_component.Pusher, self).__init__(spec=spec)
