"""tfxops audit: the audit trail (``core.audit``), printed or verified.

    tfxops audit [--version V] [--action A ...] [--since T] [--until T] [--json]
    tfxops audit --verify

T is an ISO date or time (``2026-11-29``, ``2026-11-29T20:00``; UTC unless it
names its offset). ``--verify`` checks the hash chain, and the signatures when
the key's environment variable (setting ``audit_key_env``) is set.
Exit codes: 0 ok, 1 the trail fails verification, 2 no trail or bad arguments.
"""
import argparse
import datetime
import json
import sys
from typing import Dict, List, Optional

from core import audit
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from


def _moment(text: str) -> datetime.datetime:
    """An ISO date or time as an aware UTC datetime (argparse type)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or time such as 2026-11-29 or 2026-11-29T20:00, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def selected(entries, version: Optional[str], actions: List[str], since, until) -> List[Dict]:
    """The entries that pass every given filter, in file order."""
    out = []
    for entry in entries:
        try:
            moment = _moment(str(entry.get("time")))
        except argparse.ArgumentTypeError:      # an edited entry: --verify says so
            moment = None
        if version is not None and entry.get("model_version") != version:
            continue
        if actions and entry.get("action") not in actions:
            continue
        if (since or until) and (moment is None or (since and moment < since) or (until and moment > until)):
            continue
        out.append(entry)
    return out


def entry_text(entry: Dict) -> str:
    """One entry on one line, its evidence after it."""
    version = f" v{entry['model_version']}" if entry.get("model_version") else ""
    evidence = " ".join(f"{k}={v}" for k, v in sorted((entry.get("evidence") or {}).items()))
    line = (f"{entry.get('seq', '?'):>5}  {entry.get('time', '')[:19]}Z  {entry.get('action', ''):<22}"
            f"{version}  {entry.get('actor', '')}: {entry.get('reason', '')}")
    return line + (f"\n       MLMD: {evidence}" if evidence else "")


def cmd_audit(args) -> int:
    settings = settings_from(args)
    try:
        path = audit.audit_file(settings)
        if args.verify:
            return _verify(path, audit.signing_key(settings), settings.audit_key_env)
        rows = selected(audit.entries(path), args.version, args.action or [], args.since, args.until)
    except audit.AuditError as exc:
        print(f"tfxops audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"audit trail {path}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
        for entry in rows:
            print(entry_text(entry))
    return EXIT_OK


def _verify(path, key: Optional[bytes], key_env: str) -> int:
    result = audit.verify(path, key)
    signed = "chain and signatures" if result.signatures_checked else \
        f"chain (signatures not checked: {key_env} is not set)"
    if result.ok:
        print(f"audit trail {path}: {result.entries} entries, {signed} intact")
        return EXIT_OK
    problem = result.problem
    print(f"audit trail {path}: line {problem.line}: {problem.what}", file=sys.stderr)
    return EXIT_FAILED


def register(commands) -> None:
    parser = commands.add_parser("audit", help="print the audit trail, or --verify its hash chain")
    add_common_options(parser)
    parser.add_argument("--verify", action="store_true",
                        help="check the hash chain (and signatures when the key is set); "
                             "exit 1 naming the first bad line")
    parser.add_argument("--version", help="only entries about this model version")
    parser.add_argument("--action", action="append", choices=audit.ACTIONS,
                        help="only entries of this action; repeatable")
    parser.add_argument("--since", type=_moment, help="only entries at or after this ISO date/time")
    parser.add_argument("--until", type=_moment, help="only entries at or before this ISO date/time")
    parser.add_argument("--json", action="store_true", help="the entries as a JSON list")
    parser.set_defaults(func=cmd_audit)
