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
reads when it starts) with the label ``stable`` on that version and the canary label
removed. The model's version policy is kept when it loads the version (``all``, a
``specific`` list naming it); otherwise it is widened (``serving_policy``): ``latest``
becomes ``all`` (a stable label must point to a loaded version, as TF Serving checks
at every start and reload, which ``latest`` breaks at the next push; under ``all``
later pushes load and are reachable by version, and answer requests naming no
version once promoted), a ``specific`` list gains the version. The output says what
the next push will do. The running server is told (``reload_server``: ModelService's
HandleReloadConfigRequest; nothing listening is fine, it reads the file when it
starts; a server that refuses gets the old file back, or none when there was none);
MLflow's ``champion`` alias of that model moves (``tracking.registry.move_champion``);
MLMD records a ``tfxops.Promotion`` execution (input: the version's PushedModel;
properties from_version, to_version, action, actor) and the audit trail an entry.
The version answering now ("from") is ``core.served.default_version``'s, as the
server's and the monitor's.
Exit 0 done; 1 a record not written (said which), the file not writable, a server that
listens but whose call failed (TLS, token) or did not confirm in time; 2 bad input or
a server that refuses the change (the message names the thing and the fix).
"""
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING, List, Optional

from core import audit, integrity, mlmd, pushdir, served, storage
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from
from core.secrets import SecretError

if TYPE_CHECKING:      # serving.model_config imports TensorFlow: imported when a command runs
    from serving.model_config import ServedModel

log = logging.getLogger("tfxops.serving")
PROMOTE, ROLLBACK = "promote", "rollback"
RELOAD_TIMEOUT_SECONDS = 60.0      # loading a version on a busy machine takes tens of seconds
DONE = {PROMOTE: "promoted", ROLLBACK: "rolled back"}


class PromotionError(ValueError):
    """Bad input: the message names the thing and the fix."""


class ServerNotChanged(RuntimeError):
    """The server listens but the change was not made or not confirmed (exit 1)."""


@dataclasses.dataclass
class Promotion:
    """What a promote or rollback changed and where it recorded it."""
    action: str
    model_name: str
    from_version: Optional[int]
    to_version: int
    config_file: str
    next_push: str = ""                                               # what the next push will do
    notes: List[str] = dataclasses.field(default_factory=list)      # one line per step, for the person
    failures: List[str] = dataclasses.field(default_factory=list)   # records not written


# ------------------------------------------------------------------ choosing the version
def served_entry(models: List["ServedModel"], name: str, config_file: str) -> "ServedModel":
    for model in models:
        if model.name == name:
            return model
    raise PromotionError(f"no model {name} in {config_file or 'the settings'} (served: "
                         f"{', '.join(m.name for m in models)}): pass --model NAME")


def current_version(settings, model: "ServedModel") -> Optional[int]:
    """The version answering requests naming no version now (``core.served.default_version``
    over the versions the policy serves): the stable label's, else the newest non-canary."""
    loaded = model.policy.select(pushdir.existing_versions(model.base_path))
    return served.default_version(loaded, model.labels, settings.stable_label, settings.canary_label)


def serving_policy(policy, version: int):
    """``policy`` when it loads ``version`` whatever is pushed later (all, a specific
    list naming it); else the widened one (see the module's docstring)."""
    from serving.models import VersionPolicy

    if policy.kind == "all":
        return policy
    if policy.kind == "specific":
        return policy if version in policy.versions else \
            VersionPolicy("specific", versions=tuple(sorted(set(policy.versions) | {version})))
    return VersionPolicy("all")


def next_push(policy, stable_label: str) -> str:
    """What the next push does under ``policy`` with a stable label set, for the person."""
    if policy.kind == "all":
        return (f"the next push is loaded (policy all) and answers requests naming its version; requests "
                f"naming none stay on the {stable_label} version until you promote it (tfxops promote VERSION)")
    return (f"the next push is NOT loaded (policy {policy}): promote it (tfxops promote VERSION) "
            f"or widen model_version_policy in the model config file")


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


def pushed_model(store, model: "ServedModel", version: int) -> Optional[mlmd.PushedModel]:
    """The newest PushedModel that became ``version`` of ``model`` (pushed into its base path)."""
    if store is None:
        return None
    return next((p for p in mlmd.pushed_models(store)
                 if p.version == str(version) and p.is_in(model.base_path)), None)


def check_version(settings, model: "ServedModel", version: int, store) -> None:
    """PromotionError unless ``version`` is in the push directory and passes its integrity check."""
    on_disk = pushdir.existing_versions(model.base_path)
    if version not in on_disk:
        pushed = pushed_model(store, model, version) is not None
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
    module's docstring): config file, server, MLflow, MLMD, audit. PromotionError for bad
    input, ServerNotChanged when the server listens but did not take (or confirm) it."""
    from serving import model_config as mc

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
    current = current_version(settings, model)
    if version is None:
        version = canary_version(model, settings.canary_label, config_file) if action == PROMOTE \
            else previous_version(store, model, current)
    check_version(settings, model, version, store)
    policy = serving_policy(model.policy, version)
    done = Promotion(action, model.name, current, version, config_file, next_push(policy, settings.stable_label))
    if policy != model.policy:
        done.notes.append(f"policy {model.policy} widened to {policy}: it would not keep version {version} loaded")
    new_models = [dataclasses.replace(m, policy=policy, labels=_labels_after(settings, m.labels, version))
                  if m.name == model.name else m for m in models]
    _write_and_reload(done, models if existing else None, new_models, server, token, ca_file)
    _move_champion(settings, done)
    _record(settings, store, done, model)
    return done


def _labels_after(settings, labels, version: int):
    """The labels with stable on ``version`` and the canary label gone."""
    kept = {k: v for k, v in labels.items() if k not in (settings.stable_label, settings.canary_label)}
    return {**kept, settings.stable_label: version}


def _write_and_reload(done: Promotion, old: Optional[List["ServedModel"]], new: List["ServedModel"], server: str,
                      token: Optional[str], ca_file: str) -> None:
    """The config file, then the running server; a change it did not take puts the old
    file back (``old`` None: there was none, the new one is deleted)."""
    from serving import model_config as mc

    mc.write_model_config(done.config_file, new)
    done.notes.append(f"model config written: {done.config_file}")
    try:
        mc.reload_server(server, new, timeout=RELOAD_TIMEOUT_SECONDS, token=token or "", ca_file=ca_file)
    except mc.ModelConfigError as exc:
        if exc.code == mc.NOTHING_LISTENS:
            done.notes.append(f"no server running at {server} (nothing listens): nothing to tell; tfxops serve "
                              f"reads {done.config_file} when it starts")
            return
        if exc.code == mc.NOT_CONFIRMED:
            raise ServerNotChanged(f"{exc} (the model config file {done.config_file} holds the change)") from None
        _put_back(done.config_file, old)
        unchanged = "is unchanged" if old is not None else "is not created"
        if exc.code == mc.CALL_FAILED:
            raise ServerNotChanged(f"{exc} (the model config file {done.config_file} {unchanged})") from None
        raise PromotionError(f"{exc} (the model config file {done.config_file} {unchanged})") from None
    done.notes.append(f"server at {server} reloaded: version {done.to_version} answers requests "
                      f"naming no version")


def _put_back(path: str, old: Optional[List["ServedModel"]]) -> None:
    from serving import model_config as mc

    if old is None:
        os.unlink(path)
    else:
        mc.write_model_config(path, old)


def _move_champion(settings, done: Promotion) -> None:
    """MLflow's registry alias of the promoted model (tracking.registry, when installed)."""
    if not getattr(settings, "mlflow_tracking", False):
        return
    try:
        from tracking import registry
    except ImportError:
        done.notes.append("MLflow: tracking.registry is not installed here: alias champion not moved")
        return
    model_settings = settings if done.model_name == settings.model_name else \
        dataclasses.replace(settings, model_name=done.model_name, mlflow_registered_model="")
    try:
        registry.move_champion(model_settings, done.to_version,
                               f"tfxops {done.action} from version {done.from_version}")
        done.notes.append(f"MLflow: alias champion of {done.model_name} on version {done.to_version}")
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


def _record(settings, store, done: Promotion, model: "ServedModel") -> None:
    """The MLMD execution and the audit entry."""
    actor = audit.actor_name()
    evidence = dict(audit.version_evidence(model.base_path, done.to_version))
    if store is None:
        done.failures.append(f"MLMD: no metadata store at {mlmd.describe_store(settings)}: the {done.action} "
                             f"is not recorded there (run tfxops run once, or set metadata_path)")
    else:
        pushed = pushed_model(store, model, done.to_version)
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
            ca_file = args.ca_file or settings.tls_cert_file    # a self-signed server certificate is its own CA
            if ca_file:
                check_ca_file(ca_file)
            done = change(settings, action, args.version, args.model, server, token, ca_file)
        except ValueError as exc:          # PromotionError, and the token or CA file's errors
            print(f"tfxops {action}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except ServerNotChanged as exc:
            print(f"tfxops {action}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            print(f"tfxops {action}: cannot write {exc.filename or 'the model config file'} ({exc.strerror}): "
                  f"check that this user may write there", file=sys.stderr)
            return EXIT_FAILED
        print(f"model {done.model_name}: version {done.to_version} {DONE[action]} (was {done.from_version}); "
              f"{settings.stable_label}={done.to_version}, {settings.canary_label} removed")
        for line in done.notes + [done.next_push]:
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
        p.add_argument("--ca-file", metavar="PEM", help="talk TLS, trusting this CA certificate "
                                                        "(default: the tls_cert_file setting, when set)")
        p.set_defaults(func=_command(action))
