"""Where files live: a local path, or a URI of a store TensorFlow can reach
(``gs://``, ``s3://``, ``hdfs://``, ``ram://``, ``file://``, any ``scheme://``).

A local path stays a ``pathlib.Path`` and is read and written with ``os`` and
``shutil``, as always. A URI stays a ``str`` (``pathlib`` would collapse its
``//``: ``gs://b/x`` -> ``gs:/b/x``) and is read and written through
``tf.io.gfile``; TensorFlow is imported only when a URI is used.

Stores differ in one thing the push directory (``core.pushdir``) depends on:
``has_atomic_rename``. A local filesystem (a plain path or ``file://``) renames a
directory in one step. Object stores (``gs://``, ``s3://``) and every other
scheme are treated as having no directory rename: a "rename" there is a copy of
each object, and a reader can see the copy half done.
"""
import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Iterator, List, Tuple, Union

# A local path (Path) or a URI (str): what a derived path setting is.
Location = Union[Path, str]

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def scheme(path: Location) -> str:
    """The URI scheme of ``path`` (``gs``, ``s3``, ``file``...), or "" for a local path."""
    match = _URI.match(str(path))
    return match.group(1).lower() if match else ""


def is_uri(path: Location) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return bool(scheme(path))


def has_atomic_rename(path: Location) -> bool:
    """Whether a directory under ``path`` can be renamed in one atomic step: local
    paths and ``file://`` URIs only."""
    return scheme(path) in ("", "file")


def location(path: Location) -> Location:
    """A setting's text as a location: a ``Path`` for a local path, the URI itself
    (a ``str``, trailing ``/`` removed) for a URI."""
    text = str(path)
    if is_uri(text):
        return text.rstrip("/") if not text.endswith("://") else text
    return Path(text)


def join(base: Location, *parts: str) -> Location:
    """``base/part/...``: a ``Path`` under a local base, a URI string under a URI."""
    if not is_uri(base):
        return Path(base, *parts)
    return "/".join([str(location(base))] + [str(part).strip("/") for part in parts])


def canonical(path: Location) -> str:
    """A form two spellings of one location share (for comparing locations):
    the real path of a local path, the URI without a trailing ``/``."""
    return str(location(path)) if is_uri(path) else os.path.realpath(str(path))


# --------------------------------------------------------------- file access
def _gfile():
    import tensorflow as tf
    return tf.io.gfile


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """TensorFlow's file errors as the ``OSError`` subclasses ``os`` raises."""
    import tensorflow as tf
    try:
        yield
    except tf.errors.NotFoundError as exc:
        raise FileNotFoundError(exc.message) from exc
    except tf.errors.AlreadyExistsError as exc:
        raise FileExistsError(exc.message) from exc
    except tf.errors.OpError as exc:
        raise OSError(exc.message) from exc


def exists(path: Location) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    with _store_errors():
        return _gfile().exists(str(path))


def isdir(path: Location) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    with _store_errors():
        return _gfile().isdir(str(path))


def listdir(path: Location) -> List[str]:
    """The names directly under ``path`` (no trailing ``/``), unsorted."""
    if not is_uri(path):
        return os.listdir(path)
    with _store_errors():
        return [name.rstrip("/") for name in _gfile().listdir(str(path))]


def entries(path: Location) -> List[Tuple[str, int, int]]:
    """(name, size, modification time in ns) of each entry directly under ``path``,
    by name (symbolic links not followed); ``OSError`` if ``path`` cannot be listed."""
    if not is_uri(path):
        return [(entry.name, stat.st_size, stat.st_mtime_ns)
                for entry in sorted(os.scandir(path), key=lambda e: e.name)
                for stat in [entry.stat(follow_symlinks=False)]]
    gfile = _gfile()
    with _store_errors():
        out = []
        for name in sorted(listdir(path)):
            stat = gfile.stat(str(join(path, name)))
            out.append((name, stat.length, stat.mtime_nsec))
        return out


def makedirs(path: Location) -> None:
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        return
    with _store_errors():
        _gfile().makedirs(str(path))


def make_new_dir(path: Location) -> None:
    """Create the directory ``path``, whose parent exists; ``FileExistsError`` if it
    is there already (checked first on a store: object stores have no exclusive create)."""
    if not is_uri(path):
        os.mkdir(path)
        return
    with _store_errors():
        if _gfile().exists(str(path)):
            raise FileExistsError(f"{path} exists")
        _gfile().makedirs(str(path))


def remove(path: Location) -> None:
    """Remove the file ``path``; no error if it is not there."""
    if not is_uri(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    with _store_errors():
        if _gfile().exists(str(path)):
            _gfile().remove(str(path))


def remove_tree(path: Location) -> None:
    """Remove ``path`` and everything under it; no error if it is not there."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with _store_errors():
        if _gfile().exists(str(path)):
            _gfile().rmtree(str(path))


def copy_tree(source: Location, target: Location, skip: Iterable[str] = ()) -> None:
    """Copy the files under ``source`` into ``target`` (created if needed, files
    already there overwritten), except files named in ``skip``. Either side may
    be a URI."""
    skip = set(skip)
    if not is_uri(source) and not is_uri(target):
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip))
        return
    gfile = _gfile()
    with _store_errors():
        if not gfile.isdir(str(source)):
            raise FileNotFoundError(f"no directory {source} to copy")
        gfile.makedirs(str(target))
        root = str(source).rstrip("/")
        for directory, _, files in gfile.walk(root):
            relative = [part for part in directory[len(root):].split("/") if part]
            here = str(join(target, *relative))
            gfile.makedirs(here)
            for name in files:
                if name not in skip:
                    gfile.copy(str(join(directory, name)), str(join(here, name)), overwrite=True)


def rename_dir(source: Location, target: Location) -> None:
    """Rename a directory in one step (only where ``has_atomic_rename``); raises
    ``FileExistsError`` (or another ``OSError``) when ``target`` is taken."""
    if not has_atomic_rename(source) or scheme(source) != scheme(target):
        raise OSError(f"cannot rename {source} to {target} atomically: the store has no directory rename")
    if not is_uri(source):
        os.rename(source, target)
        return
    with _store_errors():
        _gfile().rename(str(source), str(target), overwrite=False)


def read_text(path: Location) -> str:
    if not is_uri(path):
        with open(path) as handle:
            return handle.read()
    with _store_errors():
        with _gfile().GFile(str(path), "r") as handle:
            return handle.read()


def write_text(path: Location, text: str) -> None:
    if not is_uri(path):
        with open(path, "w") as handle:
            handle.write(text)
        return
    with _store_errors():
        with _gfile().GFile(str(path), "w") as handle:
            handle.write(text)


def read_chunks(path: Location, size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of the file ``path``, at most ``size`` at a time."""
    if not is_uri(path):
        with open(path, "rb") as handle:
            yield from iter(lambda: handle.read(size), b"")
        return
    with _store_errors():
        with _gfile().GFile(str(path), "rb") as handle:
            yield from iter(lambda: handle.read(size), b"")
