"""tfxops audit: the audit trail (``core.audit``), printed or verified.

    tfxops audit [--version V] [--action A ...] [--since T] [--until T] [--json]
    tfxops audit --verify

T is an ISO date or time (``2026-11-29``, ``2026-11-29T20:00``, ``...T20:00Z``;
UTC unless it names its offset). ``--verify`` checks the whole file's hash chain,
and the signatures when the key's environment variable (setting ``audit_key_env``)
is set; it takes no filters. A torn last line (a writer died mid-append) and, without
the key, an unsigned entry after signed ones are warnings, not failures.
Exit codes: 0 ok, 1 the trail fails verification or (printing) holds a malformed
entry, 2 no trail or bad arguments.
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
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text    # Python 3.10 reads no Z
    try:
        moment = datetime.datetime.fromisoformat(iso)
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
    """One entry (as ``audit.malformed`` accepts it) on one line, its evidence after it."""
    version = f" v{entry['model_version']}" if entry.get("model_version") else ""
    evidence = " ".join(f"{k}={v}" for k, v in sorted((entry.get("evidence") or {}).items()))
    line = (f"{entry.get('seq', '?'):>5}  {entry.get('time', '')[:19]}Z  {entry.get('action', ''):<22}"
            f"{version}  {entry.get('actor', '')}: {entry.get('reason', '')}")
    return line + (f"\n       MLMD: {evidence}" if evidence else "")


def verdict(path, result: audit.Verification, key_env: str) -> str:
    """``--verify``'s verdict on ``result`` in words: intact (and what was checked)
    or the first bad line, then any warnings, one a line."""
    if result.ok:
        checked = "hash chain and signatures intact" if result.signatures_checked else \
            f"hash chain intact (signatures not checked: {key_env} is not set)"
        text = f"audit trail {path}: {result.entries} entries, {checked}"
    else:
        text = f"audit trail {path}: line {result.problem.line}: {result.problem.what}"
    return "\n".join([text] + [f"  warning: line {w.line}: {w.what}" for w in result.warnings])


def cmd_audit(args) -> int:
    settings = settings_from(args)
    filters = [name for name in ("version", "action", "since", "until", "json") if getattr(args, name)]
    if args.verify and filters:
        print("tfxops audit: --verify checks the whole file and takes no filters: drop "
              + ", ".join(f"--{name}" for name in filters), file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        path = audit.audit_file(settings)
        if args.verify:
            result = audit.verify(path, audit.signing_key(settings))
            print(verdict(path, result, settings.audit_key_env), file=sys.stdout if result.ok else sys.stderr)
            return EXIT_OK if result.ok else EXIT_FAILED
        numbered = list(audit.numbered_entries(path))
    except audit.AuditError as exc:
        print(f"tfxops audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    bad = [(number, audit.malformed(entry)) for number, entry in numbered if audit.malformed(entry)]
    rows = selected((e for _, e in numbered if not audit.malformed(e)), args.version, args.action or [],
                    args.since, args.until)
    _print(path, rows, args.json)
    for number, what in bad:
        print(f"tfxops audit: {path}: line {number}: not shown, malformed ({what}): "
              f"edited by hand? `tfxops audit --verify` checks the chain", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK


def _print(path, rows: List[Dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"audit trail {path}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    for entry in rows:
        print(entry_text(entry))


def register(commands) -> None:
    parser = commands.add_parser("audit", help="print the audit trail, or --verify its hash chain")
    add_common_options(parser)
    parser.add_argument("--verify", action="store_true",
                        help="check the whole file's hash chain (and signatures when the key is set); "
                             "exit 1 naming the first bad line; takes no filters")
    parser.add_argument("--version", help="only entries about this model version")
    parser.add_argument("--action", action="append", choices=audit.ACTIONS,
                        help="only entries of this action; repeatable")
    parser.add_argument("--since", type=_moment, help="only entries at or after this ISO date/time")
    parser.add_argument("--until", type=_moment, help="only entries at or before this ISO date/time")
    parser.add_argument("--json", action="store_true", help="the entries as a JSON list")
    parser.set_defaults(func=cmd_audit)
