"""``tfxops verify [VERSION]``: check the versions of the push directory against
their manifests (``core.integrity``), as the server does before loading one; for
a server that checks nothing itself (TF Serving: docker-compose.yml runs this
before it starts). Exit 0 when every version checked is whole, 1 when one is not
(each bad file named, and the fix), 2 for bad input. Reads only.

The mode ``model_integrity=require`` (or a key in ``model_integrity_key_env``)
also fails a version without a manifest; ``model_integrity=off`` turns off the
server's check, not this command's.
"""
import dataclasses
import json
import sys
from typing import Dict, List

from core import integrity, pushdir, storage
from core.command import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_common_options, settings_from
from core.secrets import SecretError


def _versions_to_check(base, wanted) -> List[int]:
    versions = pushdir.existing_versions(base)
    return versions if wanted is None else [v for v in versions if v == wanted]


def _described(version: int, checked: integrity.VersionIntegrity, key_given: bool) -> List[str]:
    if not checked.ok:
        return [f"version {version}: FAILED"] + [f"  {problem}" for problem in checked.problems]
    if not checked.has_manifest:
        return [f"version {version}: no manifest: not verified (pushed before manifests were written, or "
                f"by another tool; push it again to cover it)"]
    signature = "signature checked" if key_given else ("signed, no key here to check it" if checked.signed
                                                       else "not signed")
    return [f"version {version}: ok ({signature})"]


def cmd_verify(args) -> int:
    settings = settings_from(args)
    base = settings.model_push_dir
    if not storage.isdir(base):
        print(f"tfxops verify: no model directory {base} (run `tfxops run` first, or set serving_dir)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    versions = _versions_to_check(base, args.version)
    if args.version is not None and not versions:
        print(f"tfxops verify: no version {args.version} in {base} (versions there: "
              f"{pushdir.existing_versions(base) or 'none'})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        policy = integrity.IntegrityPolicy.from_settings(settings)
    except SecretError as exc:
        print(f"tfxops verify: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if policy.mode == "off":          # this command always checks
        policy = dataclasses.replace(policy, mode="verify")
    key = policy.key
    warning = policy.warning(settings.model_integrity_key_env)
    if warning:
        print(f"tfxops verify: warning: {warning}", file=sys.stderr)
    results: Dict[int, integrity.VersionIntegrity] = {
        version: policy.check(storage.join(base, str(version))) for version in versions}
    failed = [version for version, checked in results.items() if not checked.ok]
    if args.json:
        print(json.dumps({"push_directory": str(base), "ok": not failed, "versions": [
            dict(version=str(version), **dataclasses.asdict(checked)) for version, checked in results.items()]}, indent=1))
    else:
        print("\n".join(line for version, checked in results.items()
                        for line in _described(version, checked, key is not None)) or f"no versions in {base}")
    if failed:
        print(f"tfxops verify: version(s) {', '.join(map(str, failed))} of {base} differ from what was pushed. "
              f"Fix: {integrity.FIX}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check the pushed versions' files against their manifests "
                                             "(exit 1 naming each file that differs)")
    add_common_options(p)
    p.add_argument("version", nargs="?", type=int, metavar="VERSION", help="check this version only "
                                                                           "(default: every version)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.set_defaults(func=cmd_verify)
