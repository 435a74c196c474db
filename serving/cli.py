"""``tfxops serve`` and ``tfxops predict`` (registered by tfxops.cli)."""
import csv
import errno
import itertools
import json
import logging
import os
import socket
import sys
import time

from core import integrity, pushdir, served, storage
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from
from core.env import show_own_logs
from core.secrets import SecretError
from serving import promote


# TF Serving's flags `tfxops serve` accepts -> the setting each sets (--set wins over them)
TF_SERVING_FLAGS = {"port": "grpc_port", "rest_api_port": "rest_port", "model_config_file": "model_config_file",
                    "model_config_file_poll_wait_seconds": "model_config_file_poll_wait_seconds",
                    "batching_parameters_file": "batching_parameters_file",
                    "monitoring_config_file": "monitoring_config_file", "enable_batching": "enable_batching",
                    "file_system_poll_wait_seconds": "poll_seconds"}


def _explicit_settings(args) -> set:
    """The settings given on this command line (TF Serving's flags, --set) or in the
    environment: they win over a batching_parameters_file."""
    from core import config

    args.set = [f"{setting}={getattr(args, flag)}" for flag, setting in TF_SERVING_FLAGS.items()
                if getattr(args, flag, None) is not None] + list(args.set or [])
    given = set(config.parse_assignments(args.set))
    return given | {name for name in config.Settings.__dataclass_fields__
                    if config.ENV_PREFIX + name.upper() in os.environ}


def _missing_model_directory(files) -> str:
    """Why a configured model cannot be served ("" if each base path is a directory)."""
    for model in files.models:
        if not storage.isdir(model.base_path):
            where = f" (base_path in {files.config_file})" if files.config_file else ""
            return (f"no model directory {model.base_path} for model {model.name}{where} (run `tfxops run` first, "
                    f"or fix the path{'; container paths need container_volumes' if files.config_file else ''})")
    return ""


def ports_in_use(settings) -> str:
    """Why ``tfxops serve`` cannot listen on its ports (gRPC ``grpc_port``, REST
    ``rest_port``; a proxy: the ones it forwards), asked before anything loads; ""
    when it can. One line: the port, the address, and the flag and setting to change."""
    proxying = bool(settings.proxy_to or settings.proxy_grpc_to)
    wanted = [("gRPC", settings.grpc_port, "--port", "grpc_port", not proxying or settings.proxy_grpc_to),
              ("REST", settings.rest_port, "--rest_api_port", "rest_port", not proxying or settings.proxy_to)]
    for api, port, flag, setting, listens in wanted:
        why = _cannot_bind(settings.host, int(port)) if listens and int(port) else ""
        if why:
            return (f"cannot listen for {api} on {settings.host}:{port} ({why}): stop the process using it, "
                    f"or choose another port with {flag} PORT (or --set {setting}=PORT)")
    return ""


def _cannot_bind(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound now, as the servers bind it (every address
    ``host`` names, SO_REUSEADDR, no SO_REUSEPORT); "" when it can."""
    try:
        addresses = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
    except socket.gaierror:
        return f"{host} is not an address of this machine: set host"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return "in use by another process" if exc.errno == errno.EADDRINUSE else exc.strerror
    return ""


def cmd_serve(args) -> int:
    explicit = _explicit_settings(args)
    settings = settings_from(args)
    if args.proxy_to:
        settings.proxy_to = args.proxy_to
    if args.proxy_grpc_to:
        settings.proxy_grpc_to = args.proxy_grpc_to
    busy = ports_in_use(settings)          # before anything loads: seconds, not a model load later
    if busy:
        print(f"tfxops serve: {busy}", file=sys.stderr)
        return EXIT_FAILED                 # as a port lost between this check and the bind
    from core.redact import Redaction
    from serving import access, admission, models
    from serving.model_config import read_serving_files

    show_own_logs(logging.INFO)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    try:
        models.VersionPolicy.parse(settings.model_version_policy)
        served.parse_labels(settings.version_labels)
        admission.Gate(settings.max_concurrent_requests)
        admission.body_timeout(settings)
        access.load_tls(settings)                 # AccessError (a ValueError) naming the file
        access.Access.from_settings(settings)
        Redaction.from_settings(settings)         # RedactionError (a ValueError) naming the salt's variable
        integrity_policy = integrity.IntegrityPolicy.from_settings(settings)   # SecretError: a key too short
        proxying = bool(settings.proxy_to or settings.proxy_grpc_to)
        files = None if proxying else read_serving_files(settings, explicit)   # ModelConfigError: the file, the fix
    except ValueError as exc:
        print(f"tfxops serve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    integrity_warning = integrity_policy.warning(settings.model_integrity_key_env)
    if integrity_warning and not (args.proxy_to or args.proxy_grpc_to):
        logging.warning("%s", integrity_warning)
    admission.raise_open_files_limit(files.settings.max_concurrent_requests if files else
                                     settings.max_concurrent_requests)
    missing = "" if proxying else _missing_model_directory(files)
    if missing:
        print(f"tfxops serve: {missing}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if proxying:
            from serving.proxy import serve
            serve(settings)
        else:
            from serving.server import serve
            serve(settings, files)
    except OSError as exc:   # a port in use, an unwritable log directory
        print(f"tfxops serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _read_rows(args):
    if args.json:
        text = sys.stdin.read() if args.json == "-" else open(args.json).read()
        data = json.loads(text)
        rows = data if isinstance(data, list) else (
            data.get("instances", [data]) if isinstance(data, dict) else [])
        return [r for r in rows if isinstance(r, dict)]
    with open(args.csv, newline="") as handle:
        return list(itertools.islice(csv.DictReader(handle), args.rows))


def cmd_predict(args) -> int:
    from serving import client

    settings = settings_from(args)
    try:
        rows = _read_rows(args)
    except OSError as exc:
        print(f"tfxops predict: cannot read the rows in {exc.filename or args.json or args.csv} "
              f"({exc.strerror}): check the path", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError:                 # not JSON, not text
        print(f"tfxops predict: {args.json or args.csv} holds no rows: pass a JSON list of objects "
              f"(--json) or a CSV file with a header line (--csv)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not rows:
        print("tfxops predict: no rows to send", file=sys.stderr)
        return EXIT_BAD_INPUT
    port = args.port or (settings.grpc_port if args.protocol == "grpc" else settings.rest_port)
    try:
        token = client.read_token(args.token_file, args.token_env or settings.auth_token_env)
        if args.ca_file:
            client.check_ca_file(args.ca_file)
    except ValueError as exc:          # AccessError too: messages naming the file and the fix
        print(f"tfxops predict: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    c = client.make_client(args.protocol, args.host or settings.host, port, settings.model_name,
                           token=token, ca_file=args.ca_file)
    request_id = args.request_id or client.new_request_id()
    try:
        predictions = c.predict_rows(rows, version=args.version, request_id=request_id)
    except client.ServingError as exc:
        print(f"tfxops predict: the server answered {exc}", file=sys.stderr)
        return EXIT_FAILED
    except client.Unreachable as exc:          # no server, a silent host, TLS that does not match
        print(f"tfxops predict: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:                  # a value that is not of its feature's type
        print(f"tfxops predict: cannot send the rows: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        c.close()
    if args.output == "json":
        print(json.dumps({"request_id": request_id, "predictions": predictions}))
    else:
        for row, p in zip(rows, predictions):
            print(f"{p:.6f}")
    return EXIT_OK


def cmd_sync_models(args) -> int:
    """Mirror the complete versions of the push directory that pass the integrity check
    (``model_integrity``, the key) into a local directory (docs/storage.md: TF Serving
    checks no completion marker and no manifest); exit 1 naming a version not copied."""
    settings = settings_from(args)
    source = settings.model_push_dir
    try:
        policy = integrity.IntegrityPolicy.from_settings(settings)     # the server's check, as TF Serving has none
    except SecretError as exc:
        print(f"tfxops sync-models: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    problem = _sync_target_problem(args.to, source, policy)
    if problem:
        print(f"tfxops sync-models: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    integrity_warning = policy.warning(settings.model_integrity_key_env)
    if integrity_warning:
        print(f"tfxops sync-models: warning: {integrity_warning}", file=sys.stderr)
    reported = set()
    while True:
        try:
            mirrored = pushdir.mirror_versions(source, args.to, policy)
        except OSError:
            logging.exception("sync-models failed")
            print(f"tfxops sync-models: cannot copy the versions of {source} into {args.to}: check that "
                  f"both are reachable and {args.to} is writable", file=sys.stderr)
            return EXIT_FAILED
        for version in mirrored.copied:
            print(f"version {version}: copied from {source} to {args.to}", flush=True)
        _report_refused(mirrored.refused, source, reported)
        if args.once:
            return EXIT_FAILED if mirrored.refused else EXIT_OK
        time.sleep(settings.poll_seconds)


def _sync_target_problem(target, source, policy) -> str:
    """Why ``target`` cannot receive ``source``'s versions; "" if it can."""
    if not storage.has_atomic_rename(target):
        return f"--to {target} must be a local directory (one rename makes a version appear there whole)"
    wanted = integrity.model_of(source)
    if policy.key is not None and integrity.model_of(target) != wanted:
        return (f"--to {target} must end in /{wanted}, the name of the push directory {source}: each version's "
                f"signed manifest names its model, and a copy under another name fails verification")
    return ""


def _report_refused(refused, source, reported) -> None:
    """Each version not copied (failed its check), once per process, on stderr."""
    for version, problems in refused.items():
        if version not in reported:
            print(f"tfxops sync-models: version {version} of {source} NOT copied: it differs from what was pushed:"
                  + "".join(f"\n  {problem}" for problem in problems) + f"\nFix: {integrity.FIX}",
                  file=sys.stderr, flush=True)
            reported.add(version)


def _add_tf_serving_flags(p) -> None:
    """TF Serving's own flags (tensorflow_model_server's names), so its command line
    runs here too; each sets the setting TF_SERVING_FLAGS names (--set wins)."""
    tf = p.add_argument_group("TF Serving's flags (each sets a setting; --set wins over them)")
    tf.add_argument("--port", type=int, metavar="PORT", help="gRPC port (grpc_port)")
    tf.add_argument("--rest_api_port", type=int, metavar="PORT", help="REST port (rest_port)")
    tf.add_argument("--model_config_file", metavar="FILE",
                    help="TF Serving's text ModelServerConfig: the models, their policies and labels")
    tf.add_argument("--model_config_file_poll_wait_seconds", type=float, metavar="SECONDS",
                    help="re-read --model_config_file this often (0: never)")
    tf.add_argument("--batching_parameters_file", metavar="FILE", help="TF Serving's BatchingParameters text file")
    tf.add_argument("--monitoring_config_file", metavar="FILE",
                    help="TF Serving's MonitoringConfig text file (where the Prometheus metrics are)")
    tf.add_argument("--enable_batching", nargs="?", const="true", metavar="BOOL",
                    help="batch requests (enable_batching; tfxops serve batches by default)")
    tf.add_argument("--file_system_poll_wait_seconds", type=float, metavar="SECONDS",
                    help="scan the model directories this often (poll_seconds)")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve pushed models with TF Serving's REST/gRPC APIs")
    add_common_options(p)
    p.add_argument("--proxy-to", metavar="HOST:PORT", help="forward REST (on rest_port) to TF Serving's REST API "
                                      "at host:port, logging requests (instead of serving "
                                      "models here)")
    p.add_argument("--proxy-grpc-to", metavar="HOST:PORT", help="forward gRPC (on grpc_port) to TF Serving's gRPC "
                                           "API at host:port, logging requests")
    _add_tf_serving_flags(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("sync-models", help="copy complete model versions from the push directory "
                                                  "(an object store) into a local directory TF Serving watches")
    add_common_options(p)
    p.add_argument("--to", required=True, metavar="DIR", help="the local directory (TF Serving's model base path)")
    p.add_argument("--once", action="store_true", help="copy what is there now and exit (default: keep "
                                                       "polling every poll_seconds)")
    p.set_defaults(func=cmd_sync_models)

    p = subparsers.add_parser("predict", help="send rows to a model server, print predictions")
    add_common_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--csv", metavar="FILE", help="CSV of rows (default: the bundled taxi data)")
    src.add_argument("--json", metavar="FILE", help="JSON file of rows (a list of objects), or - for stdin")
    p.add_argument("--rows", type=int, default=5, metavar="N", help="rows to send from --csv (default 5)")
    p.add_argument("--protocol", choices=["rest", "grpc"], default="rest",
                   help="REST (default; no TensorFlow needed here) or gRPC")
    p.add_argument("--host", metavar="HOST", help="server host (default: the host setting)")
    p.add_argument("--port", type=int, metavar="PORT", help="server port (default: rest_port / grpc_port)")
    p.add_argument("--version", type=int, metavar="N", help="ask for this model version")
    p.add_argument("--request-id", metavar="ID", help="the request's id in the server's request log (default: "
                                        "a new random one; --output json prints it), for "
                                        "feedback CSVs")
    p.add_argument("--output", choices=["text", "json"], default="text")
    p.add_argument("--token-file", metavar="FILE", help="a file holding the bearer token for a server that "
                                        "asks for one (owner-only permissions)")
    p.add_argument("--token-env", metavar="NAME", help="an environment variable holding the token (default: "
                                       "the auth_token_env setting)")
    p.add_argument("--ca-file", metavar="FILE", help="talk TLS (https), trusting the CA certificate in this "
                                     "PEM file (for a self-signed server: its certificate)")

    def _default_csv(args):
        if not args.json and not args.csv:
            settings = settings_from(args)
            from pathlib import Path
            args.csv = str(Path(settings.data_dir) / "data.csv")
        return cmd_predict(args)

    p.set_defaults(func=_default_csv)
    promote.register(subparsers)      # tfxops promote / rollback (issue 17 part 4)
