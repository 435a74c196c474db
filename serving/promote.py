"""``tfxops promote [VERSION]`` and ``tfxops rollback [VERSION]``: change the version
that answers a model's requests, everywhere it is recorded.

* promote: VERSION (default: the version the ``canary_label`` names) becomes the
  ``stable_label`` version; the canary label goes.
* rollback: VERSION (default: the version served before the current one: the
  newest recorded promotion to it says which, else the newest pushed version older
  than it) becomes the stable version the same way.

Either way: the version must be in the model's push directory and pass its
integrity check (``core.integrity``, as the server checks before loading); the
model config file is written (``serving.model_config.write_model_config``:
``model_config_file``, else ``<home>/serving/models.config``, which ``tfxops serve``
reads when it starts) with the policy ``specific`` on that version and the label
``stable`` on it; the running server is told (``reload_server``: ModelService's
HandleReloadConfigRequest; no server running is fine, it reads the file when it
starts; a server that refuses gets the old file back); MLflow's ``champion``
alias moves (``tracking.registry.move_champion``); MLMD records a
``tfxops.Promotion`` execution (input: the version's PushedModel; properties
from_version, to_version, action, actor) and the audit trail an entry.
Exit 0 done; 1 a record not written (said which) or the file not writable; 2 bad input
or a server that refuses the change (the message names the thing and the fix).
"""
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING, List, Optional

from core import audit, integrity, mlmd, pushdir, storage
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from
from core.secrets import SecretError

if TYPE_CHECKING:      # serving.model_config imports TensorFlow: imported when a command runs
    from serving.model_config import ServedModel

log = logging.getLogger("tfxops.serving")
PROMOTE, ROLLBACK = "promote", "rollback"
DONE = {PROMOTE: "promoted", ROLLBACK: "rolled back"}


class PromotionError(ValueError):
    """Bad input: the message names the thing and the fix."""


@dataclasses.dataclass
class Promotion:
    """What a promote or rollback changed and where it recorded it."""
    action: str
    model_name: str
    from_version: Optional[int]
    to_version: int
    config_file: str
    notes: List[str] = dataclasses.field(default_factory=list)      # one line per step, for the person
    failures: List[str] = dataclasses.field(default_factory=list)   # records not written


# ------------------------------------------------------------------ choosing the version
def served_entry(models: List["ServedModel"], name: str, config_file: str) -> "ServedModel":
    for model in models:
        if model.name == name:
            return model
    raise PromotionError(f"no model {name} in {config_file or 'the settings'} (served: "
                         f"{', '.join(m.name for m in models)}): pass --model NAME")


def current_version(model: "ServedModel", stable_label: str) -> Optional[int]:
    """The version answering requests now: the stable label's, else the newest the policy serves."""
    if stable_label in model.labels:
        return model.labels[stable_label]
    served = model.policy.select(pushdir.existing_versions(model.base_path))
    return served[-1] if served else None


def canary_version(model: "ServedModel", canary_label: str, config_file: str) -> int:
    if canary_label not in model.labels:
        raise PromotionError(
            f"no canary to promote: model {model.name} has no '{canary_label}' label in "
            f"{config_file or 'version_labels'} (labels: {model.labels or 'none'}). Fix: name the version "
            f"(tfxops promote VERSION) or label one {canary_label} (version_labels, or the model config file)")
    return model.labels[canary_label]


def previous_version(store, model: "ServedModel", current: Optional[int]) -> int:
    """The version served before ``current``: the newest recorded promotion to it says
    which (MLMD), else the newest version in the push directory older than it."""
    for record in mlmd.promotions(store) if store is not None else []:
        if record.get("model_name") == model.name and str(record.get("to_version")) == str(current) \
                and str(record.get("from_version") or "").isdigit() and int(record["from_version"]) != current:
            return int(record["from_version"])
    older = [v for v in pushdir.existing_versions(model.base_path) if current is None or v < current]
    if not older:
        raise PromotionError(f"nothing to roll back to: model {model.name} has no version older than {current} "
                             f"in {model.base_path} and no recorded promotion to it. Fix: name the version "
                             f"(tfxops rollback VERSION)")
    return older[-1]


def check_version(settings, model: "ServedModel", version: int, store) -> None:
    """PromotionError unless ``version`` is in the push directory and passes its integrity check."""
    on_disk = pushdir.existing_versions(model.base_path)
    if version not in on_disk:
        pushed = store is not None and mlmd.pushed_model_for_version(store, version) is not None
        what = (f"version {version} of model {model.name} was pushed but is no longer in {model.base_path}"
                if pushed else f"no version {version} of model {model.name} in {model.base_path}")
        raise PromotionError(f"{what} (versions there: {on_disk or 'none'}). Fix: name one of them, or push "
                             f"the model again (tfxops run)")
    try:
        policy = integrity.IntegrityPolicy.from_settings(settings)
    except SecretError as exc:
        raise PromotionError(str(exc)) from None
    if policy.mode == "off":           # the version about to be served is always checked
        policy = dataclasses.replace(policy, mode="verify")
    checked = policy.check(storage.join(model.base_path, str(version)))
    if not checked.ok:
        raise PromotionError(f"version {version} of model {model.name} fails its integrity check: "
                             f"{checked.summary()}. Fix: {integrity.FIX}")


# ------------------------------------------------------------------ changing it
def change(settings, action: str, version: Optional[int], model_name: Optional[str],
           server: str, token: Optional[str] = None, ca_file: str = "") -> Promotion:
    """Promote or roll back (``action``) ``version`` of ``model_name`` (defaults: see the
    module's docstring): config file, server, MLflow, MLMD, audit. PromotionError for bad input."""
    from serving import model_config as mc
    from serving.models import VersionPolicy

    existing = mc.config_file_of(settings)
    config_file = existing or str(settings.served_model_config_path)
    try:      # as the file says (container paths, written back as they were), and as this host sees them
        models = mc.read_model_config(existing) if existing else [   # a file needs absolute base paths
            m if storage.is_uri(m.base_path) else dataclasses.replace(m, base_path=os.path.abspath(m.base_path))
            for m in mc.models_from_settings(settings)]
        model = served_entry(mc.models_from_settings(settings), model_name or settings.model_name, config_file)
    except mc.ModelConfigError as exc:
        raise PromotionError(str(exc)) from None
    store = _open_store(settings)
    current = current_version(model, settings.stable_label)
    if version is None:
        version = canary_version(model, settings.canary_label, config_file) if action == PROMOTE \
            else previous_version(store, model, current)
    check_version(settings, model, version, store)
    done = Promotion(action, model.name, current, version, config_file)
    new_models = [dataclasses.replace(m, policy=VersionPolicy("specific", versions=(version,)),
                                      labels={settings.stable_label: version}) if m.name == model.name else m
                  for m in models]
    _write_and_reload(done, models, new_models, server, token, ca_file)
    _move_champion(settings, done)
    _record(settings, store, done)
    return done


def _write_and_reload(done: Promotion, old: List["ServedModel"], new: List["ServedModel"], server: str,
                      token: Optional[str], ca_file: str) -> None:
    """The config file, then the running server; a server that refuses gets the old file back."""
    from serving import model_config as mc

    mc.write_model_config(done.config_file, new)
    done.notes.append(f"model config written: {done.config_file}")
    try:
        mc.reload_server(server, new, token=token or "", ca_file=ca_file)
    except mc.ModelConfigError as exc:
        if "no model server answers" not in str(exc):
            mc.write_model_config(done.config_file, old)
            raise PromotionError(f"{exc} (the model config file {done.config_file} is unchanged)") from None
        done.notes.append(f"no server running at {server}: nothing to tell; tfxops serve reads "
                          f"{done.config_file} when it starts")
        return
    done.notes.append(f"server at {server} reloaded: version {done.to_version} answers requests "
                      f"naming no version")


def _move_champion(settings, done: Promotion) -> None:
    """MLflow's registry alias (issue 18 part 8's tracking.registry, when it is installed)."""
    try:
        from tracking import registry
    except ImportError:
        done.notes.append("MLflow: tracking.registry is not installed here: alias champion not moved")
        return
    try:
        registry.move_champion(settings, done.to_version, f"tfxops {done.action} from version {done.from_version}")
        done.notes.append(f"MLflow: alias champion on version {done.to_version} (unless mlflow_tracking is off)")
    except Exception as exc:   # noqa: BLE001 - the served change stands; say what was not recorded
        log.warning("MLflow alias not moved", exc_info=True)
        done.failures.append(f"MLflow: alias champion not moved ({type(exc).__name__}); see the log")


def _open_store(settings):
    """The metadata store, read-write; None when there is none (said when recording)."""
    try:
        return mlmd.open_store(settings, readonly=False, must_exist=True)
    except mlmd.MetadataError as exc:
        log.info("no metadata store: %s", exc)
        return None


def _record(settings, store, done: Promotion) -> None:
    """The MLMD execution and the audit entry."""
    actor = audit.actor_name()
    evidence = dict(audit.version_evidence(settings.model_push_dir, done.to_version))
    if store is None:
        done.failures.append(f"MLMD: no metadata store at {mlmd.describe_store(settings)}: the {done.action} "
                             f"is not recorded there (run tfxops run once, or set metadata_path)")
    else:
        pushed = mlmd.pushed_model_for_version(store, done.to_version)
        execution_id = mlmd.record_promotion(store, {
            "action": done.action, "from_version": done.from_version, "to_version": done.to_version,
            "actor": actor, "model_name": done.model_name, "config_file": done.config_file},
            pushed.artifact if pushed is not None else None)
        evidence.update(promotion_execution_id=execution_id,
                        **({"pushed_model_artifact_id": pushed.artifact.id} if pushed else {}))
        done.notes.append(f"MLMD: {mlmd.PROMOTION} execution {execution_id}" + (
            f" (input PushedModel {pushed.artifact.id})" if pushed else " (no PushedModel recorded for it)"))
    written = audit.record(settings, audit.PROMOTE if done.action == PROMOTE else audit.ROLLBACK,
                           f"model {done.model_name}: version {done.to_version} {DONE[done.action]} "
                           f"(was {done.from_version}); config {done.config_file}", evidence,
                           model_version=done.to_version, actor=actor)
    if written.error:
        done.failures.append(f"audit: {written.error}")
    else:
        done.notes.append(f"audit: entry in {written.path}")


# ------------------------------------------------------------------ CLI
def _command(action: str):
    def run(args) -> int:
        settings = settings_from(args)
        server = args.server or f"{'127.0.0.1' if settings.host in ('0.0.0.0', '::', '') else settings.host}:" \
                                f"{settings.grpc_port}"
        try:
            from serving.client import check_ca_file, read_token
            token = read_token(args.token_file, args.token_env or settings.auth_token_env)
            if args.ca_file:
                check_ca_file(args.ca_file)
            done = change(settings, action, args.version, args.model, server, token, args.ca_file or "")
        except ValueError as exc:          # PromotionError, and the token or CA file's errors
            print(f"tfxops {action}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as exc:
            print(f"tfxops {action}: cannot write {exc.filename or 'the model config file'} ({exc.strerror}): "
                  f"check that this user may write there", file=sys.stderr)
            return EXIT_FAILED
        print(f"model {done.model_name}: version {done.to_version} {DONE[action]} (was {done.from_version}); "
              f"{settings.stable_label}={done.to_version}, {settings.canary_label} removed")
        for line in done.notes:
            print(f"  {line}")
        for line in done.failures:
            print(f"tfxops {action}: NOT RECORDED: {line}", file=sys.stderr)
        return EXIT_FAILED if done.failures else EXIT_OK
    return run


def register(subparsers) -> None:
    for action, text, default in (
            (PROMOTE, "make a version the stable one (finish a canary)", "the canary label's version"),
            (ROLLBACK, "serve the version served before again", "the version served before the current one")):
        p = subparsers.add_parser(action, help=f"{text}: model config file, running server, MLflow alias, "
                                               f"MLMD and audit trail (e.g. tfxops {action} --home outputs)")
        add_common_options(p)
        p.add_argument("version", nargs="?", type=int, metavar="VERSION", help=f"the version (default: {default})")
        p.add_argument("--model", metavar="NAME", help="the model (default: the model_name setting)")
        p.add_argument("--server", metavar="HOST:PORT", help="the running server's gRPC address "
                                                             "(default: host and grpc_port)")
        p.add_argument("--token-file", metavar="FILE", help="a file holding a bearer token the server accepts")
        p.add_argument("--token-env", metavar="VARIABLE", help="an environment variable holding that token "
                                                                "(default: the auth_token_env setting)")
        p.add_argument("--ca-file", metavar="PEM", help="talk TLS, trusting this CA certificate")
        p.set_defaults(func=_command(action))
