"""``tfxops monitor`` and ``tfxops approve`` (registered by tfxops.cli).

    tfxops monitor [--dry-run] [--watch SECONDS] [--json] [--engine local|beam] [--home DIR] [--set key=value ...]
    tfxops monitor report [--open] [--home DIR]     every window's page and <monitor_dir>/index.html again

``--engine`` sets ``monitor_engine`` for this command: ``local`` (the default: this
machine's processes) or ``beam`` (a Beam job run with ``beam_args``; see
``monitoring/engine.py``).

Exit codes: 0 analysed (whatever the decision, ``alert`` included: an alert is
reported, in the summary line, the report and MLMD, not a failure of the run),
no new requests, or only log files still being written; 1 an action failed (the
pipeline rerun failed, a re-push failed); 2 bad input: no metadata store, a
request-log directory that does not exist, a monitor directory that cannot be
locked, bad settings; 3 another monitor holds the lock on the monitor directory
(longer than ``monitor_lock_wait_seconds``): this run did nothing, the message
names the holder. With ``--watch`` each run takes the lock, and a busy or failed
run is reported and the next one runs on schedule.

    tfxops approve WINDOW | --list | --reject WINDOW [--home DIR] [--set key=value ...]

A span of labelled requests that the poisoning guard held (``monitoring.poisoning``)
waits in ``<monitor_dir>/spans/pending``. ``approve WINDOW`` releases it: the span
joins the training spans and the pipeline reruns now, under the monitor lock, its
summary printed; ``--reject`` discards it; ``--list`` shows what waits, and why. Each
is audited with the person who ran it. Exit codes: 0 done (released and the rerun
succeeded, rejected, listed); 1 the rerun failed (the span stays among the training
spans: the next retrain uses it); 2 bad input: no span of that window waits (unknown,
or already approved or rejected, not a window id), a span or hold file that cannot be
read, written or moved (the message names it), bad settings; 3 a monitor holds the lock.
"""
import logging
import sys
import time
from pathlib import Path

from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from
from core.env import show_own_logs
from core.config import MONITOR_ENGINES, ConfigError

EXIT_BUSY = 3          # another monitor holds the lock: nothing done


def _once(settings, args) -> int:
    from monitoring import lock, monitor
    from core.mlmd import MetadataError

    print_line = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        result = monitor.monitor_once(settings, dry_run=args.dry_run, out=print_line)
    except lock.LockBusy as exc:
        print(f"tfxops monitor: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except (monitor.MonitorError, MetadataError, lock.LockError, ConfigError) as exc:
        print(f"tfxops monitor: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(result.to_json(brief=True))
    return EXIT_FAILED if result.failed else EXIT_OK


def not_a_home(settings) -> str:
    """Why there is nothing to monitor at ``settings``' home: neither its metadata
    store nor its request-log directory exists (a mistyped --home); "" otherwise.
    (A home with only one of them is the monitor's to judge: it names what is missing.)"""
    from core import storage

    logs = settings.request_logs_path
    if any(storage.is_uri(path) for path in (logs, settings.monitor_path, settings.feedback_path)):
        return ""            # refused by the monitor, naming the setting
    if Path(logs).exists():
        return ""
    store = settings.metadata_file
    if settings.metadata_backend != "sqlite" or storage.is_uri(store) or Path(store).exists():
        return ""
    home = Path(settings.home)
    where = f"{home} does not exist" if not home.exists() else f"{home} holds no tfxops home"
    return (f"{where}: found neither a metadata store ({store}) nor request logs ({logs}). Pass --home "
            f"the directory `tfxops run` and `tfxops serve` write to (default ./outputs), or set "
            f"metadata_path and request_log_dir")


def cmd_monitor(args) -> int:
    if args.engine:
        args.set = list(args.set or []) + [f"monitor_engine={args.engine}"]
    settings = settings_from(args)
    problem = not_a_home(settings)
    if problem:
        print(f"tfxops monitor: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    show_own_logs(logging.WARNING, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.watch:
        return _once(settings, args)
    if args.watch <= 0:
        print("tfxops monitor: --watch takes a positive number of seconds", file=sys.stderr)
        return EXIT_BAD_INPUT
    while True:      # a schedule: one run per interval; a failed run is reported, the next one runs
        started = time.monotonic()
        try:
            code = _once(settings, args)
            if code != EXIT_OK:
                print(f"tfxops monitor: run ended with exit code {code}; next run in {args.watch:g} s",
                      file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - keep watching
            logging.exception("monitor run failed: %s", exc)
        sys.stdout.flush()
        time.sleep(max(0.0, args.watch - (time.monotonic() - started)))


def cmd_monitor_report(args) -> int:
    """``tfxops monitor report``: every window's page and the index again, from the
    saved results and statistics; prints the index's path (``--open``: in a browser)."""
    import webbrowser

    from monitoring import report

    try:
        index = report.regenerate(settings_from(args))
    except (FileNotFoundError, ConfigError) as exc:
        print(f"tfxops monitor report: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"tfxops monitor report: cannot write {exc.filename} ({exc.strerror}): run it as the monitor's "
              f"user", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(index)
    if args.open and not webbrowser.open(index.resolve().as_uri()):
        print(f"no browser to open; open {index.resolve().as_uri()}", file=sys.stderr)
    return EXIT_OK


def cmd_approve(args) -> int:
    from core import audit
    from monitoring import act, approval, lock

    settings = settings_from(args)
    if bool(args.list) == bool(args.window):
        print("tfxops approve: name a WINDOW (from `tfxops approve --list`), or --list", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with lock.hold(settings.monitor_path, settings.monitor_lock_wait_seconds, print):
            if args.list:
                return _list_held(approval.held(settings.monitor_path))
            if args.reject:
                entry = act.discard(settings, args.window, audit.actor_name())
                print(f"window {entry.window}: span of {entry.rows} rows rejected and discarded")
                return EXIT_OK
            outcome = act.release(settings, args.window, audit.actor_name(), out=sys.stdout)
    except lock.LockBusy as exc:
        print(f"tfxops approve: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except (approval.ApprovalError, lock.LockError) as exc:
        print(f"tfxops approve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"tfxops approve: cannot read or write {exc.filename or settings.monitor_path} ({exc.strerror}): "
              f"run it as the monitor's user, or make {settings.monitor_path} readable and writable by you",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    print(outcome.summary_text or f"retrain on the released span: {outcome.error}")
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _list_held(entries) -> int:
    if not entries:
        print("no span waits for approval")
    for entry in entries:
        print(entry.line())
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor", help="compare served requests with the training data; report; retrigger the pipeline")
    add_common_options(p)
    p.add_argument("--dry-run", action="store_true",
                   help="analyse and report only: no action, the checkpoint does not advance")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="run every SECONDS seconds until interrupted")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--engine", choices=MONITOR_ENGINES,
                   help="how the window's logs are read: local processes (default) or a Beam job "
                        "(beam_args); the setting monitor_engine")
    p.set_defaults(func=cmd_monitor)
    pages = p.add_subparsers(dest="monitor_command", metavar="{report}")
    page = pages.add_parser("report", help="regenerate every window's report and the index "
                            "(<home>/monitoring/index.html) from the saved results; print its path")
    add_common_options(page)
    page.add_argument("--open", action="store_true", help="open the index in a web browser")
    page.set_defaults(func=cmd_monitor_report)

    approve = subparsers.add_parser(
        "approve", help="release (or reject) a span of labelled requests the poisoning guard held from a retrain")
    add_common_options(approve)
    approve.add_argument("window", nargs="?", help="the window whose span to release (see --list)")
    approve.add_argument("--list", action="store_true", help="show the windows whose spans wait, and why")
    approve.add_argument("--reject", action="store_true", help="discard the window's span instead")
    approve.set_defaults(func=cmd_approve)
