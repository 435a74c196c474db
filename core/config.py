"""The one configuration of tfxops: every path, name, threshold, step count, port and
Beam argument. Everything else reads it from here.

Precedence (highest first): ``tfxops ... --set key=value`` on the command line,
``TFXOPS_<KEY>`` environment variables, the defaults below.

Relative paths are taken from the current directory; ``home`` (default
``./outputs``) holds everything a run writes.

Paths and URIs. Every path setting takes a local path or a URI of any store
TensorFlow's file system reaches (``gs://``, ``s3://``, ``hdfs://``,
``file://``...). The derived paths (``pipeline_root_path``, ``model_push_dir``...)
are a ``pathlib.Path`` for a local path, exactly as before, and the URI itself,
a ``str`` with its ``//`` kept, for a URI (``core.storage.join``; ``pathlib``
would turn ``gs://b/x`` into ``gs:/b/x``). A ``home`` URI puts every default
under it. Code that may meet a URI reads and writes through ``core.storage``
(``tf.io.gfile``). What works on a local disk only (the request-log writer's
fsync and flock, the monitor's lock) asks for ``require_local``, which names the
setting to change instead of failing later. The SQLite metadata file is local
too; a store shared by machines is MySQL (``metadata_backend``).
"""
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Dict, List, Optional

from core import storage
from core.features import RAW_FEATURE_TYPES
from core.storage import Location

# The repository root (data/ and schema/ live beside the packages).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "TFXOPS_"
MONITOR_ENGINES = ("local", "beam")    # Settings.monitor_engine
BEAM_RUNNERS = ("local", "portable")    # Settings.beam_runner


class ConfigError(ValueError):
    """A setting that is unknown or cannot be parsed."""


@dataclasses.dataclass
class Settings:
    # --- names
    pipeline_name: str = "tfxops-taxi"
    model_name: str = "taxi"

    # --- inputs (checked into the repository)
    data_dir: str = str(PROJECT_ROOT / "data" / "taxi")
    schema_path: str = str(PROJECT_ROOT / "schema" / "schema.pbtxt")
    # model code, as importable paths (the package must be installed where
    # components run: here the editable install, elsewhere the container image)
    preprocessing_fn: str = "modules.transform.preprocessing_fn"
    run_fn: str = "modules.trainer.run_fn"

    # --- outputs: everything a run writes lives under home
    home: str = "outputs"
    pipeline_root: str = ""   # default: <home>/pipeline_root
    metadata_path: str = ""   # default: <home>/metadata.sqlite
    serving_dir: str = ""     # default: <home>/serving_model; versions in <serving_dir>/<model_name>/<version>
    log_dir: str = ""         # default: <home>/logs

    # --- training
    train_steps: int = 600
    eval_steps: int = 50
    batch_size: int = 128
    learning_rate: float = 0.003
    hidden_units: List[int] = dataclasses.field(default_factory=lambda: [64, 32])
    seed: int = 42

    # --- evaluation and blessing
    min_auc: float = 0.70            # value threshold: AUC must be at least this
    min_binary_accuracy: float = 0.60
    max_auc_drop: float = 0.01       # change threshold: at most this much below the baseline
    slice_features: List[str] = dataclasses.field(
        default_factory=lambda: ["trip_start_hour", "payment_type"])

    # --- fairness gate (issue 15; pipeline/fairness.py): only lines of that work here
    sensitive_features: List[str] = dataclasses.field(
        default_factory=lambda: ["payment_type", "pickup_community_area"])
    decision_threshold: float = 0.5          # a score above this is a positive prediction (Evaluator and monitor)
    # a slice of a sensitive feature is gated when its evaluation examples hold at least this
    # many of EACH label (AUC, FPR and FNR need both); smaller slices are reported, not gated
    fairness_min_examples_per_class: int = 50
    fairness_min_slice_auc: float = 0.50     # no gated slice's AUC below this (0.5: no better than chance)
    fairness_max_fpr_gap: float = 0.25       # largest false positive rate minus smallest, over a feature's gated slices
    # the same for the false negative rate: the demo's 2013-2014 trips put O'Hare (area 76, airport
    # trips) 0.285 above area 8 at 64 positives; the full sample's gap is 0.079
    fairness_max_fnr_gap: float = 0.35

    # --- the data gate: stop before Transform/Trainer on anomalies of these severities
    gate_severities: List[str] = dataclasses.field(default_factory=lambda: ["ERROR"])

    # --- execution
    enable_cache: bool = True
    # Empty = Beam's DirectRunner in in_memory mode with one worker: for data this
    # size the fastest local setting. (Any non-empty list also makes TFX build an
    # sdist of itself for remote workers in every Beam component.)
    # Dataflow: ["--runner=DataflowRunner", "--project=...", "--region=...", ...]
    beam_args: List[str] = dataclasses.field(default_factory=list)
    # local: beam_args as they are; portable: Beam's PortableRunner against a job service
    # with an EXTERNAL worker pool (pipeline/runner.py beam_arguments; beam_args follow, and win)
    beam_runner: str = "local"
    beam_job_endpoint: str = ""              # host:port of a Beam job service; empty: start one for the run
    beam_worker_pool: str = ""               # host:port of an EXTERNAL worker pool; empty: start one for the run
    beam_worker_image: str = "tfxops:latest" # the image Beam workers run (Dockerfile): --sdk_container_image
    preflight_rows: int = 100_000   # rows read by the CSV checks before a run

    # --- metadata store (MLMD): sqlite (metadata_path) or mysql
    metadata_backend: str = "sqlite"
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    mysql_database: str = "tfxops"
    mysql_user: str = "tfxops"
    # the password is read from the environment variable named here, never stored
    mysql_password_env: str = "TFXOPS_MYSQL_PASSWORD"

    # --- serving (tfxops serve; TF Serving's ports and defaults)
    host: str = "127.0.0.1"
    rest_port: int = 8501
    grpc_port: int = 8500
    model_version_policy: str = "latest"     # latest | latest:N | specific:V1,V2 | all
    version_labels: str = ""                 # e.g. "stable=1795743875,canary=1795743999"
    poll_seconds: float = 1.0                # how often the push directory is scanned
    enable_batching: bool = True
    max_batch_size: int = 32
    batch_timeout_micros: int = 20_000       # the longest a request waits for others; tfxops
                                             # serve waits only under load (serving/batching.py)
    max_request_bytes: int = 10 * 1024 * 1024
    max_concurrent_requests: int = 1024      # inference requests in flight (REST + gRPC); more are
                                             # answered at once 429 / RESOURCE_EXHAUSTED with
                                             # Retry-After (503 / UNAVAILABLE: shutting down)
    request_body_timeout_seconds: float = 60.0   # a REST body not fully received by then:
                                             # its connection is closed (it holds no slot)
    intra_op_threads: int = 1                # TF session pools (TF Serving's --tensorflow_*_parallelism);
    inter_op_threads: int = -1               # 0: TF's default, -1: ops on the calling thread
    busy_poll_micros: int = 500              # an idle loop polls this long before sleeping
                                             # (serving/busy_poll.py); 0: off
    proxy_to: str = ""                       # host:port of TF Serving's REST API to forward to
    proxy_grpc_to: str = ""                  # host:port of TF Serving's gRPC API to forward to

    # --- request logging (PredictionLog TFRecords; monitoring's input)
    request_log_dir: str = ""                # default: <home>/request_logs
    log_sample_rate: float = 1.0
    log_rotate_records: int = 10_000
    log_rotate_seconds: float = 60.0

    # --- monitoring (tfxops monitor; see monitoring/__init__.py)
    monitor_dir: str = ""                    # default: <home>/monitoring (checkpoint, reports, spans)
    feedback_dir: str = ""                   # default: <home>/feedback: CSVs of request_id[,row],tips
    monitor_max_files: int = 1000            # log files per window (the rest: next run)
    monitor_workers: int = 0                 # processes decoding logs (0: one per CPU, at most 4)
    monitor_min_rows: int = 500              # fewer rows in a window: report, never act
    monitor_min_labelled: int = 50           # labelled rows needed to judge model quality
    prediction_drift_threshold: float = 0.1  # JS divergence, served vs evaluation-set predictions
    # the policy: any reason below makes the window actionable (0 / false = ignore)
    trigger_on_error_anomalies: bool = True  # any schema anomaly of ERROR severity
    trigger_skewed_features: int = 1         # this many features over their skew threshold
    trigger_drifted_features: int = 0        # ... over their drift threshold (vs the previous window)
    trigger_on_prediction_drift: bool = False
    trigger_quality_drop: float = 0.05       # AUC below the Evaluator's by this much
    cooldown_seconds: float = 3600.0         # no action within this long after the last one
    retrain_with_feedback: bool = True       # labelled requests become a new data span
    retrain_include_original: bool = True    # retrain on data_dir's CSVs plus the spans
    reuse_blessed_models: bool = True        # re-push a blessed model whose training data matches
    # rejected requests (logged by the server and proxies): alert, never retrain, when at
    # least this share of a version's requests were rejected (0: off) ...
    alert_rejection_rate: float = 0.05
    alert_min_rejected: int = 10             # ... and at least this many (a tiny window stays quiet)
    # a log file whose framing ends in a cut record is incomplete (retried by the next
    # run) until it has not changed for this long; then it is corrupt and quarantined
    monitor_incomplete_grace_seconds: float = 600.0
    monitor_lock_wait_seconds: float = 0.0   # a second monitor waits this long for the lock, then exits 3
    # how a window's logs are read into statistics: "local" (forked processes on this
    # machine) or "beam" (a Beam job run with beam_args: DirectRunner by default)
    monitor_engine: str = "local"

    # --- bias and attribution drift (issue 15; monitoring/bias.py, monitoring/attribution_drift.py)
    # bias drift: each sensitive slice's figures in a window vs the Evaluator's for the served model
    bias_min_slice_rows: int = 100           # fewer window rows (labelled rows) or evaluation examples: shown, not judged
    bias_max_rate_change: float = 0.10       # a slice's positive rate, accuracy, FPR or FNR moved by more than this
    bias_max_auc_drop: float = 0.05          # a slice's AUC this much below the Evaluator's
    bias_max_gap_change: float = 0.10        # the largest gap between a feature's slices moved by more than this
    bias_significance: float = 0.01          # ... and a two-sided z-test says the move is not noise at this level
    trigger_on_bias_drift: bool = False      # on: a reason to act like the other checks; off: an alert, never acted on
    # attribution drift: sampled Shapley attributions (core/attribution.py) at push time vs on the served rows
    attribution_rows: int = 200              # rows explained: of the evaluation split at push, of each window's served rows (0: off)
    attribution_background_rows: int = 50    # training rows that stand for an absent feature (drawn at push, reused per window)
    attribution_samples: int = 8             # permutations per explained row (cost: rows x samples x (features + 1) model rows)
    attribution_min_ndcg: float = 0.90       # flag when the NDCG of the window's ranking vs the push-time one is below (SageMaker's)
    trigger_on_attribution_drift: bool = False   # on: a reason to act like the other checks; off: an alert, never acted on

    # --- model card (issue 15; pipeline/model_card.py): written into every pushed version
    # owners as "name <contact>" (the contact part optional)
    model_card_owners: List[str] = dataclasses.field(
        default_factory=lambda: ["tfxops maintainers <the project's issue tracker>"])
    model_card_overview: str = ("Predicts whether a Chicago taxi trip's tip is more than 20% of its fare "
                                "(the probability), from what is known of the trip when it ends.")
    model_card_users: List[str] = dataclasses.field(default_factory=lambda: [
        "Analysts studying tipping in the public Chicago taxi trips data",
        "Engineers trying the tfxops MLOps loop (train, gate, serve, monitor, retrain) end to end"])
    model_card_use_cases: List[str] = dataclasses.field(default_factory=lambda: [
        "Estimating the share of big tips across groups of trips (hours, areas, companies)",
        "A realistic model to exercise serving, monitoring and retraining"])
    model_card_limitations: List[str] = dataclasses.field(default_factory=lambda: [
        "Cash tips are mostly not recorded in the source data: payment_type largely decides the "
        "label, so the model says little about cash riders' tipping",
        "Trained on a sample of past trips: fares, areas and habits drift over time, and the "
        "monitor's skew and drift checks are the guard",
        "Not for decisions about individual drivers or riders (pay, ratings, access to rides): "
        "pickup_community_area stands for the neighbourhood, a proxy for income and ethnicity"])

    # --- audit trail (issue 15; core/audit.py)
    audit_path: str = ""                     # default: <home>/audit/audit.jsonl (a local file: appends are locked)
    # entries are signed with HMAC-SHA256 when the environment variable named here holds
    # a key (the key itself is never stored); `tfxops audit --verify` then checks the signatures
    audit_key_env: str = "TFXOPS_AUDIT_KEY"

    # --- model integrity (issue 16 part 1; core/integrity.py): only lines of that work here
    # before the server loads a version it checks the version's manifest (every file's SHA-256,
    # written at push): "verify" refuses a mismatch and serves a version without a manifest with
    # a warning, "require" also refuses a version without one, "off" checks nothing
    model_integrity: str = "verify"
    # the environment variable holding the manifests' HMAC-SHA256 key (never stored): when it
    # holds one, pushes sign their manifests and the server refuses an unsigned or badly signed one
    model_integrity_key_env: str = "TFXOPS_MODEL_KEY"

    # --- inference access: tokens, TLS, rate limits (issue 16 part 2; serving/access.py): only lines of that work here
    auth_tokens_file: str = ""               # lines "NAME TOKEN" (# comments), owner-only file; set: calls need a token
    auth_token_env: str = ""                 # an environment variable holding one more token (its client name: the variable's)
    auth_metrics: bool = False               # the metrics pages need a token too (default: open to scrapers)
    proxy_forward_token: bool = False        # the logging proxy passes the caller's Authorization on to TF Serving
    tls_cert_file: str = ""                  # PEM certificate (chain): REST and gRPC over TLS (with tls_key_file)
    tls_key_file: str = ""                   # its PEM private key (owner-only file)
    rate_limit_per_second: float = 0.0       # calls per second per client (token name, else IP address); 0: off
    rate_limit_burst: int = 0                # calls a client may make at once beyond that rate (needed with a rate)
    rate_limit_max_clients: int = 10_000     # clients tracked at once: the longest idle are forgotten first

    # --- extraction and probing signals (issue 16 part 3; monitoring/probing.py): only lines of that work here
    probing_alert: bool = True               # a client flagged as probing makes the window an alert (never a retrain)
    probing_top_clients: int = 10            # clients listed by query volume, per version, in the report
    probing_min_rows: int = 100              # a client's answered rows needed before it is judged
    probing_boundary_margin: float = 0.05    # near the boundary: |served score - decision_threshold| <= this
    probing_ratio: float = 2.0               # flagged when a statistic is this many times the other traffic's ...
    probing_min_boundary_share: float = 0.2  # ... and its near-boundary share at least this (absolute floor)
    probing_min_sweep: float = 0.35          # ... or its sweep statistic (mean total variation, 0..1) at least this

    # --- out-of-domain inputs (issue 16 part 4; core/domain.py): only lines of that work here
    # what the server does with a request whose values fall outside the pushed version's input
    # domain (core/domain.py): "log" counts it per feature and marks its log record, "reject"
    # answers INVALID_ARGUMENT before the model runs, "off" does not look
    out_of_domain_action: str = "log"
    # numeric domains: the training [min, max] widened on each side by this fraction of its width
    out_of_domain_range_margin: float = 0.25
    # the monitor alerts (never retrains) when a feature's out-of-domain rate in a window reaches
    # this fraction of its requests (0: no alert; the rate is reported either way)
    alert_out_of_domain_rate: float = 0.0

    # --- feedback poisoning guard (issue 16 part 5; monitoring/poisoning.py): only lines of that work here
    # a new span of labelled requests is checked before an automatic retrain uses it; a span that
    # fails a check waits in <monitor_dir>/spans/pending for `tfxops approve WINDOW` (a bound of 1: off)
    retrain_requires_approval: bool = False          # every span waits for approval, whatever the checks say
    poisoning_max_label_rate_change: float = 0.15    # the span's big-tipper rate vs the training history's
    poisoning_max_slice_label_rate_change: float = 0.25   # ... per slice (sensitive, slice features, categorical inputs)
    poisoning_significance: float = 0.01             # ... and a two-sided z-test says the move is not noise
    poisoning_min_slice_rows: int = 100              # fewer rows in the span or the history: the slice is not judged
    poisoning_max_feature_distance: float = 0.25     # a model input's JS divergence / L-infinity vs the history's
    # model inputs whose distribution is not judged: a window covers weeks, the training history years
    poisoning_unjudged_features: List[str] = dataclasses.field(default_factory=lambda: ["trip_start_month"])

    # --- trusted holdout (issue 16 part 5; pipeline/holdout.py): only lines of that work here
    # curated CSVs no served traffic reaches; the eval split of their hash split is the holdout
    # ("": data_dir's CSVs, which a retrain reads beside the spans of labelled requests)
    trusted_holdout_dir: str = ""
    # the candidate's AUC on the holdout may be at most this below the served model's (with no
    # served model: at least min_auc); a candidate that loses more is not pushed
    holdout_max_auc_drop: float = 0.02
    holdout_min_examples: int = 200          # fewer examples in the holdout: the gate refuses

    # --- request logs as sensitive data (issue 16 part 6; core/redact.py): only lines of that work here
    log_drop_features: List[str] = dataclasses.field(default_factory=list)   # raw features never logged
    log_hash_features: List[str] = dataclasses.field(default_factory=list)   # raw features logged as salted HMAC-SHA256
    log_hash_salt_env: str = "TFXOPS_LOG_SALT"   # the environment variable holding that salt (never stored)

    # --- TF Serving's configuration files (issue 17 part 1; serving/model_config.py): only lines of that work here
    model_config_file: str = ""              # TF Serving's --model_config_file (text ModelServerConfig); "": one
                                             # model from model_name/serving_dir/model_version_policy/version_labels
                                             # (or <home>/serving/models.config when it exists)
    model_config_file_poll_wait_seconds: float = 0   # re-read model_config_file this often; 0: never (as TF Serving)
    batching_parameters_file: str = ""       # TF Serving's BatchingParameters text file (needs enable_batching)
    monitoring_config_file: str = ""         # TF Serving's MonitoringConfig text file: where metrics are exposed
    container_volumes: List[str] = dataclasses.field(default_factory=list)   # "host:container[:ro]" as compose's
                                             # volumes: container paths in those files are read from the host path
    # token names (auth_tokens_file / auth_token_env) allowed gRPC HandleReloadConfigRequest; tokens off:
    # only callers on this machine (loopback) may reload
    reload_config_clients: List[str] = dataclasses.field(default_factory=list)

    # --- warm-up and infra validation (issue 17 part 2; core/warmup.py, pipeline/infra_validation.py): only lines of that work here
    # evaluation rows per signature in each pushed version's warm-up file (TF Serving's
    # assets.extra/tf_serving_warmup_requests, replayed before the version is served); 0: no file
    warmup_examples: int = 3
    # before push, load the candidate in `tfxops serve` and send it the warm-up requests
    # (InfraValidator); a candidate that fails is not pushed (InfraBlessing blessed=0)
    infra_validation: bool = True
    # the InfraValidator's server: start, load and answers, at most this long (then not blessed)
    infra_validation_timeout_seconds: float = 300.0

    # --- Open Inference Protocol, KServe V2 (issue 17 part 3; serving/v2/): only lines of that work here

    # --- canary and shadow, promote and rollback (issue 17 part 4; serving/traffic_split.py): only lines of that work here
    canary_percent: float = 0.0              # % of requests naming no version or label answered by the canary_label version
    shadow_percent: float = 0.0              # % of those requests also run on the canary_label version (logged, never returned)
    canary_label: str = "canary"             # the version label of the candidate (promote removes it)
    stable_label: str = "stable"             # the version label of production (promote/rollback set it); none: the latest

    # --- MLflow mirror and registry (issue 18; tracking/): only lines of that work here
    mlflow_tracking: bool = True             # mirror runs, pushed versions and monitor windows to MLflow
    mlflow_tracking_uri: str = ""            # any MLflow tracking URI; "": sqlite:///<home>/mlflow.db
    mlflow_experiment: str = "tfxops"        # runs go here, monitor windows to "<mlflow_experiment>-monitor"
    mlflow_registered_model: str = ""        # the registered model pushed versions become; "": model_name

    # --- monitoring report and index (issue 18; monitoring/report.py): only lines of that work here

    # --- terminal (issue 18; tfxops/cli.py, core/command.py): only lines of that work here

    # ------------------------------------------------------------ derived paths
    # A Path for a local path, the URI (str) for a URI: see the module docstring.
    def _under_home(self, value: str, default: str) -> Location:
        return storage.location(value) if value else storage.join(self.home, default)

    @property
    def pipeline_root_path(self) -> Location:
        return self._under_home(self.pipeline_root, "pipeline_root")

    @property
    def metadata_file(self) -> Location:
        return self._under_home(self.metadata_path, "metadata.sqlite")

    @property
    def serving_base(self) -> Location:
        return self._under_home(self.serving_dir, "serving_model")

    @property
    def model_push_dir(self) -> Location:
        """Where versions of the model are pushed: <serving_dir>/<model_name>."""
        return storage.join(self.serving_base, self.model_name)

    @property
    def served_model_config_path(self) -> Location:
        """The model config file ``tfxops promote`` writes when model_config_file is "":
        <home>/serving/models.config (read by ``tfxops serve`` when it exists)."""
        return storage.join(self.home, "serving", "models.config")

    @property
    def logs_path(self) -> Location:
        return self._under_home(self.log_dir, "logs")

    @property
    def request_logs_path(self) -> Location:
        return self._under_home(self.request_log_dir, "request_logs")

    @property
    def monitor_path(self) -> Location:
        return self._under_home(self.monitor_dir, "monitoring")

    @property
    def feedback_path(self) -> Location:
        return self._under_home(self.feedback_dir, "feedback")

    def derived_paths(self) -> Dict[str, str]:
        """Every path above as it is used, by the name of the setting it derives from
        (``model_push_dir`` and ``served_model_config`` have none of their own)."""
        return {"pipeline_root": str(self.pipeline_root_path),
                "metadata_path": str(self.metadata_file),
                "serving_dir": str(self.serving_base),
                "model_push_dir": str(self.model_push_dir),
                "served_model_config": str(self.served_model_config_path),
                "log_dir": str(self.logs_path),
                "request_log_dir": str(self.request_logs_path),
                "monitor_dir": str(self.monitor_path),
                "feedback_dir": str(self.feedback_path)}

    @property
    def hparams(self) -> Dict:
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "hidden_units": list(self.hidden_units), "seed": self.seed}

    def as_dict(self) -> Dict:
        return dataclasses.asdict(self)


def _parse(field: dataclasses.Field, raw: str):
    """A setting's value from its text form, by the field's declared type."""
    origin = typing.get_origin(field.type)
    kind = field.type
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float):
            return kind(raw)
        if origin is list:
            (item,) = typing.get_args(field.type)
            raw = raw.strip()
            items = json.loads(raw) if raw.startswith("[") else [x.strip() for x in raw.split(",") if x.strip()]
            return [item(x) for x in items]
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"setting '{field.name}' expects {name}, got {raw!r}") from exc
    return raw


def load(overrides: Optional[Dict[str, str]] = None,
         environ: Optional[Dict[str, str]] = None) -> Settings:
    """Defaults, then TFXOPS_* environment variables, then explicit overrides."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values = {}
    for name, field in fields.items():
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = _parse(field, env_value)
    for name, raw in (overrides or {}).items():
        key = name.replace("-", "_")
        if key not in fields:
            raise ConfigError(
                f"unknown setting '{name}'. Known settings: {', '.join(sorted(fields))}")
        values[key] = _parse(fields[key], raw) if isinstance(raw, str) else raw
    for name, choices in (("monitor_engine", MONITOR_ENGINES), ("beam_runner", BEAM_RUNNERS)):
        if values.get(name, "local") not in choices:
            raise ConfigError(f"setting '{name}' must be one of {', '.join(choices)}, got {values[name]!r}")
    unknown = [name for name in values.get("sensitive_features", []) if name not in RAW_FEATURE_TYPES]
    if unknown:
        raise ConfigError(f"setting 'sensitive_features' names {', '.join(unknown)}, not a raw feature; "
                          f"raw features: {', '.join(sorted(RAW_FEATURE_TYPES))}")
    _check_access_settings(values)                # inference access (issue 16 part 2)
    _check_poisoning_settings(values)             # feedback poisoning guard (issue 16 part 5a)
    _check_probing_settings(values)               # extraction and probing signals (issue 16 part 3)
    from core import domain, holdout, integrity, redact   # each owns its settings' checks (issue 16)
    for settings_problem in (domain.settings_problem, integrity.settings_problem, holdout.settings_problem,
                             redact.settings_problem):
        problem = settings_problem(values)
        if problem:
            raise ConfigError(problem)
    _check_serving_files_settings(values)         # TF Serving's configuration files (issue 17 part 1)
    _check_traffic_split_settings(values)         # canary and shadow (issue 17 part 4)
    _check_mlflow_settings(values)                # MLflow mirror and registry (issue 18)
    from core import warmup                       # warm-up and infra validation (issue 17 part 2)
    if warmup.settings_problem(values):
        raise ConfigError(warmup.settings_problem(values))
    return Settings(**values)


def _check_mlflow_settings(values: Dict) -> None:
    """The MLflow experiment needs a name (the registered model's defaults to model_name)."""
    if values.get("mlflow_tracking", True) and not values.get("mlflow_experiment", Settings.mlflow_experiment).strip():
        raise ConfigError("setting 'mlflow_experiment' is empty: name the MLflow experiment runs go to "
                          "(default tfxops), or turn the mirror off with mlflow_tracking=false")


def _check_traffic_split_settings(values: Dict) -> None:
    """Canary and shadow shares (serving/traffic_split.py): percentages, two distinct labels."""
    for name in ("canary_percent", "shadow_percent"):
        if not 0 <= values.get(name, getattr(Settings, name)) <= 100:
            raise ConfigError(f"setting '{name}' is a percentage of requests: between 0 and 100, got {values[name]}")
    canary, stable = values.get("canary_label", Settings.canary_label), values.get("stable_label", Settings.stable_label)
    if not canary or not stable or canary == stable:
        raise ConfigError(f"settings 'canary_label' ({canary!r}) and 'stable_label' ({stable!r}) must be two "
                          f"different, non-empty version labels")


def _check_serving_files_settings(values: Dict) -> None:
    """TF Serving's configuration-file settings (serving/model_config.py reads the files)."""
    if values.get("model_config_file_poll_wait_seconds", 0) < 0:
        raise ConfigError("setting 'model_config_file_poll_wait_seconds' must be >= 0 (0: never re-read)")
    if values.get("batching_parameters_file") and not values.get("enable_batching", True):
        raise ConfigError("setting 'batching_parameters_file' is set without enable_batching: "
                          "set enable_batching=true (--enable_batching) or drop the file")
    for volume in values.get("container_volumes", []):
        parts = volume.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            raise ConfigError(f"setting 'container_volumes' expects host:container[:ro] with an absolute "
                              f"container path (as compose's volumes), got {volume!r}")


def _check_access_settings(values: Dict) -> None:
    """Inference access settings that cannot work together (issue 16 part 2)."""
    def value(name):
        return values.get(name, getattr(Settings, name))
    if bool(value("tls_cert_file")) != bool(value("tls_key_file")):
        raise ConfigError("settings 'tls_cert_file' and 'tls_key_file' go together: set both "
                          "(a PEM certificate and its private key), or neither for plain text")
    rate, burst = value("rate_limit_per_second"), value("rate_limit_burst")
    if rate < 0 or burst < 0 or value("rate_limit_max_clients") < 1:
        raise ConfigError("settings 'rate_limit_per_second' and 'rate_limit_burst' must be at least 0 "
                          "and 'rate_limit_max_clients' at least 1")
    if (rate > 0) != (burst > 0):
        raise ConfigError(f"settings 'rate_limit_per_second' ({rate:g}) and 'rate_limit_burst' ({burst}) "
                          f"go together: a rate needs a burst of at least 1 (calls a client may make "
                          f"at once); both 0 turn the limit off")


def _check_poisoning_settings(values: Dict) -> None:
    """The poisoning guard's bounds (issue 16 part 5a): rates and distances in [0, 1]."""
    for name in ("poisoning_max_label_rate_change", "poisoning_max_slice_label_rate_change",
                 "poisoning_max_feature_distance"):
        if not 0 <= values.get(name, getattr(Settings, name)) <= 1:
            raise ConfigError(f"setting '{name}' must be between 0 and 1 (1: never holds a span), "
                              f"got {values[name]}")
    if not 0 < values.get("poisoning_significance", Settings.poisoning_significance) < 1:
        raise ConfigError(f"setting 'poisoning_significance' must be between 0 and 1 (exclusive), "
                          f"got {values['poisoning_significance']}")
    unknown = [name for name in values.get("poisoning_unjudged_features", []) if name not in RAW_FEATURE_TYPES]
    if unknown:
        raise ConfigError(f"setting 'poisoning_unjudged_features' names {', '.join(unknown)}, not a raw feature; "
                          f"raw features: {', '.join(sorted(RAW_FEATURE_TYPES))}")
    if values.get("poisoning_min_slice_rows", Settings.poisoning_min_slice_rows) < 1:
        raise ConfigError(f"setting 'poisoning_min_slice_rows' must be at least 1, "
                          f"got {values['poisoning_min_slice_rows']}")


def _check_probing_settings(values: Dict) -> None:
    """The probing signals' bounds (issue 16 part 3): shares and margins in [0, 1], a ratio
    above 0, at least one row per judged client."""
    for name in ("probing_boundary_margin", "probing_min_boundary_share", "probing_min_sweep"):
        if not 0 <= values.get(name, getattr(Settings, name)) <= 1:
            raise ConfigError(f"setting '{name}' must be between 0 and 1, got {values[name]}")
    if values.get("probing_ratio", Settings.probing_ratio) <= 0:
        raise ConfigError(f"setting 'probing_ratio' must be above 0 (a client is flagged at this many times the "
                          f"other traffic's statistic), got {values['probing_ratio']}")
    for name, least in (("probing_min_rows", 1), ("probing_top_clients", 0)):
        if values.get(name, getattr(Settings, name)) < least:
            raise ConfigError(f"setting '{name}' must be at least {least}, got {values[name]}")


def require_local(setting: str, path: Location, needs: str) -> Path:
    """``path`` (the value of ``setting``) as a local ``Path``; a ``ConfigError``
    naming the setting if it is a URI. ``needs`` says what requires a local disk,
    e.g. "the request-log writer fsyncs and locks its files"."""
    if storage.is_uri(path):
        raise ConfigError(
            f"setting '{setting}' is {path}, a URI, but {needs}: set it to a directory on a local "
            f"disk (--set {setting}=DIR) and copy what it holds to the store from there")
    return Path(path)


def parse_assignments(pairs: List[str]) -> Dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'} (the CLI's --set)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out
