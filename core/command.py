"""What every ``tfxops`` sub-command shares: exit codes, the common options, and
settings built from them. The stage packages' ``cli`` modules and the front door
(``tfxops/cli.py``) use these; nothing here knows any sub-command."""
import argparse

from core import config

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--home and --set, on every sub-command."""
    parser.add_argument("--home", metavar="DIR", help="directory for everything a run writes (default ./outputs)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting (see `tfxops config`); repeatable")


def settings_from(args: argparse.Namespace) -> config.Settings:
    """Settings with this command's --set, --home, --data and --runner applied."""
    overrides = config.parse_assignments(getattr(args, "set", None))
    if getattr(args, "home", None):
        overrides["home"] = args.home
    if getattr(args, "data", None):
        overrides["data_dir"] = args.data
    if getattr(args, "runner", None):
        overrides["beam_runner"] = args.runner
    return config.load(overrides)
