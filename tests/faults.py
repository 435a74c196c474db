"""Run a tfxops command in this process and `kill -9` it at a chosen filesystem step.

    python -m tests.faults --kill-after-rename-into DIR -- run --home H ...
    python -m tests.faults --kill-at-copy N --into-prefix .incoming- -- run ...

The fault is injected from the test side: the child wraps ``os.rename`` (or
``shutil.copyfile``) and sends itself SIGKILL right after the rename of a numeric
directory into DIR (a push made visible, before anything else happens), or
before the N-th file copied into a directory whose name starts with the prefix
(a push killed half-way through its copy). The code under test is unchanged and
the process dies of a real SIGKILL: no ``finally``, no atexit, no flush.
Also callable as ``python -m tests.faults ... -- --python MODULE:FUNCTION ARGS``
to run a function instead of the CLI.
"""
import argparse
import importlib
import os
import shutil
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_rename_into(directory: str) -> None:
    original = os.rename
    directory = os.path.realpath(directory)

    def rename(src, dst, *args, **kwargs):
        original(src, dst, *args, **kwargs)
        dst = os.path.realpath(os.fspath(dst))
        if os.path.dirname(dst) == directory and os.path.basename(dst).isdigit():
            _die()

    os.rename = rename


def kill_at_copy(count: int, prefix: str) -> None:
    original, seen = shutil.copyfile, [0]

    def copyfile(src, dst, *args, **kwargs):
        if any(part.startswith(prefix) for part in os.fspath(dst).split(os.sep)):
            seen[0] += 1
            if seen[0] >= count:
                _die()
        return original(src, dst, *args, **kwargs)

    shutil.copyfile = copyfile


def main(argv) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-after-rename-into")
    parser.add_argument("--kill-at-copy", type=int)
    parser.add_argument("--into-prefix", default=".incoming-")
    parser.add_argument("--python", help="MODULE:FUNCTION called with the remaining arguments")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.kill_after_rename_into:
        kill_after_rename_into(args.kill_after_rename_into)
    if args.kill_at_copy:
        kill_at_copy(args.kill_at_copy, args.into_prefix)
    if args.python:
        module, function = args.python.split(":")
        result = getattr(importlib.import_module(module), function)(*rest)
        print(result)
        return 0
    from tfxops import cli
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
