"""The served model: its versions on disk, which of them to serve, loading,
unloading and status, as TF Serving's file-system source and manager do.

* Versions are the numeric children of the push directory
  (``settings.model_push_dir``, ``core.pushdir.existing_versions``); hidden
  ``.incoming-*`` staging copies are ignored. The directory may be a URI
  (``gs://``, ``s3://``...): versions load through TensorFlow's file system, and
  on a store without rename a version is discovered only once its completion
  marker is written (``core.pushdir``), so no half-copied version is loaded.
* ``VersionPolicy``: ``latest`` (1), ``latest:N``, ``specific:V1,V2`` or ``all``.
* A new version is loaded next to the served ones and becomes the one served for
  "latest" requests once it is AVAILABLE; only then are versions the policy no longer
  wants unloaded. Unloading waits for the requests still holding that version.
* A version that fails to load is reported as state END with TF Serving's error code
  and message, and is not retried until its directory changes (a half-written
  push that completes later is picked up). The versions already served keep serving,
  and the policy chooses again among the loadable versions in the same scan: a
  broken newest version at start-up means the newest loadable one is served from
  the first request (TF Serving instead refuses to start: "Some models did not
  become available").
* Before a version loads, its files are checked against its manifest
  (``core.integrity``, setting ``model_integrity``): a version that fails is not
  loaded (state END, FAILED_PRECONDITION, the files named; ``on_refused`` is told)
  and, like any failed load, the versions already served keep serving.

Each version is loaded with TensorFlow's SavedModel loader into its own graph and
session (what TF Serving does in C++): signatures run as ``Session`` callables,
without per-request Python graph building, and unloading closes the session.
"""
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from core import storage
from core.domain import DomainError, InputDomain, read_domain
from core.integrity import FIX as INTEGRITY_FIX, IntegrityPolicy, VersionIntegrity
from core.pushdir import existing_versions
from core.served import default_version
from serving.errors import invalid, not_found
from serving.warmup import replay as replay_warmup_requests

log = logging.getLogger("tfxops.serving")

# ModelVersionStatus.State
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
UNLOAD_WAIT_SECONDS = 60.0


# ------------------------------------------------------------------ policy, labels
@dataclass(frozen=True)
class VersionPolicy:
    kind: str                      # latest | specific | all
    count: int = 1
    versions: Tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        raw = (text or "latest").strip().lower()
        try:
            if raw == "latest":
                return cls("latest", 1)
            if raw.startswith("latest:"):
                count = int(raw.split(":", 1)[1])
                if count < 1:
                    raise ValueError
                return cls("latest", count)
            if raw == "all":
                return cls("all")
            if raw.startswith("specific:"):
                versions = tuple(sorted(int(v) for v in raw.split(":", 1)[1].split(",") if v.strip()))
                if not versions:
                    raise ValueError
                return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"model_version_policy must be latest, latest:N (N >= 1), "
                         f"specific:V1,V2 or all; got {text!r}")

    def select(self, candidates: Sequence[int]) -> List[int]:
        """The versions to serve among the loadable ``candidates``."""
        ordered = sorted(candidates)
        if self.kind == "latest":
            return ordered[-self.count:]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def __str__(self):
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


# ------------------------------------------------------------------ one version
@dataclass(frozen=True)
class SessionThreads:
    """TensorFlow session parallelism, as TF Serving's ``--tensorflow_intra_op_parallelism``
    and ``--tensorflow_inter_op_parallelism`` (0: TensorFlow's default, one thread per
    core in each pool). ``inter_op = -1`` runs a call's ops on the thread that makes
    the call, without handing them to a pool.

    The defaults (intra 1, inter -1) suit small models such as ours: TensorFlow's
    pools hand every op of a 1-row call to worker threads that then spin waiting for
    more, burning CPU a small model does not need (docs/bench-serving.md);
    parallelism comes from the batch threads instead. Raise them for big models on
    many cores."""
    intra_op: int = 1
    inter_op: int = -1

    def apply(self, config) -> None:
        config.intra_op_parallelism_threads = self.intra_op
        config.inter_op_parallelism_threads = self.inter_op


@dataclass
class TensorSpec:
    alias: str
    tensor_name: str
    dtype: int                     # types_pb2.DataType
    shape: Optional[List[int]]     # None: unknown rank


@dataclass
class Signature:
    name: str
    method_name: str
    inputs: Dict[str, TensorSpec]
    outputs: Dict[str, TensorSpec]

    @functools.cached_property
    def batchable(self) -> bool:
        """Every input and output is batch-major ([-1, ...]): requests can be concatenated."""
        return all(t.shape and t.shape[0] == -1 for t in
                   list(self.inputs.values()) + list(self.outputs.values()))


class ModelVersion:
    """One loaded SavedModel version: a graph, a session and its signatures."""

    def __init__(self, name: str, version: int, path: str,
                 threads: "SessionThreads" = None, reads_domain: bool = True):
        import tensorflow as tf

        self.name, self.version, self.path = name, version, path
        # its input domain (core.domain); None: not checked (out_of_domain_action off, none pushed, unreadable)
        self.domain = self._input_domain() if reads_domain else None
        self.graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        (threads or SessionThreads()).apply(config)
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            with self.graph.as_default():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, ["serve"], path)
        except BaseException:
            self.session.close()
            raise
        self.signatures: Dict[str, Signature] = {}
        for sig_name, sig in self.meta_graph.signature_def.items():
            if sig_name.startswith("__"):
                continue   # __saved_model_init_op and friends
            self.signatures[sig_name] = Signature(
                sig_name, sig.method_name,
                {k: _spec(k, v) for k, v in sig.inputs.items()},
                {k: _spec(k, v) for k, v in sig.outputs.items()})
        self._callables: Dict[tuple, Callable] = {}
        self.checked_runs: Dict[tuple, tuple] = {}   # request shape -> serving.service.CheckedRun
        self._lock = threading.Lock()
        self.refs = 0
        self.retired = False           # unloaded while calls still ran: closed by the last
        self.owner = None              # the ModelManager that loaded it (release goes back there)

    def _input_domain(self) -> Optional[InputDomain]:
        """The domain pushed with this version; None, with a warning naming the file,
        when it cannot be read: the version is served, unchecked."""
        try:
            return read_domain(self.path)
        except DomainError as exc:
            log.warning("model %s version %d is served WITHOUT its out-of-domain check: %s", self.name,
                        self.version, exc)
            return None

    def signature_def_map(self):
        """The SignatureDefMap proto GetModelMetadata answers with."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        out = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.meta_graph.signature_def.items():
            out.signature_def[key].CopyFrom(sig)
        return out

    def run(self, signature: Signature, feeds: Dict[str, np.ndarray],
            output_aliases: Sequence[str]) -> Dict[str, np.ndarray]:
        """Run ``signature`` on ``feeds`` (alias -> array); returns alias -> array."""
        in_names = tuple(sorted(feeds))
        key = (signature.name, in_names, tuple(output_aliases))
        entry = self._callables.get(key)
        if entry is None:
            with self._lock:
                entry = self._callables.get(key)
                if entry is None:
                    entry = self._callables[key] = self._make_callable(
                        signature, in_names, output_aliases)
        fn, dtypes = entry
        args = []
        for alias, dtype in zip(in_names, dtypes):
            value = feeds[alias]
            if dtype is not None and (type(value) is not np.ndarray or value.dtype != dtype):
                value = np.asarray(value, dtype=dtype)
            args.append(value)
        results = fn(*args)
        return dict(zip(output_aliases, results))

    def _make_callable(self, signature: Signature, in_names: Sequence[str],
                       output_aliases: Sequence[str]):
        """(callable, numpy dtype of each feed). The C++ ``Session::MakeCallable`` API
        (what Keras' TF1 backend uses): one C call per run, unlike
        ``Session.make_callable`` with feeds, which goes through ``Session.run`` and
        its per-call feed/fetch processing."""
        from serving.tensors import numpy_dtype

        fetches = [signature.outputs[a].tensor_name for a in output_aliases]
        feeds = [signature.inputs[a].tensor_name for a in in_names]
        try:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(feeds)
            options.fetch.extend(fetches)
            fn = self.session._make_callable_from_options(options)   # noqa: SLF001
            dtypes = []
            for alias in in_names:
                try:
                    dtypes.append(np.dtype(numpy_dtype(signature.inputs[alias].dtype)))
                except Exception:   # noqa: BLE001 - an exotic dtype: fed as given
                    dtypes.append(None)
            return fn, tuple(dtypes)
        except (AttributeError, TypeError):   # a TensorFlow without the private API
            return self.session.make_callable(fetches, feeds), (None,) * len(in_names)

    def warm_up(self):
        """Build the callables of batchable signatures on an empty batch (best effort)."""
        for sig in self.signatures.values():
            if not sig.batchable:
                continue
            feeds = {}
            for alias, spec in sig.inputs.items():
                from serving.tensors import numpy_dtype
                feeds[alias] = np.zeros([0] + [max(d, 1) for d in spec.shape[1:]],
                                        dtype=numpy_dtype(spec.dtype))
            try:
                self.run(sig, feeds, sorted(sig.outputs))
            except Exception as exc:   # noqa: BLE001 - a warm-up failure is not a load failure
                log.debug("warm-up of %s/%s signature %s: %s", self.name, self.version, sig.name, exc)

    def close(self):
        self._callables.clear()
        self.session.close()


def _spec(alias, info) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return TensorSpec(alias, info.name, info.dtype, shape)


# ------------------------------------------------------------------ status
@dataclass
class VersionStatus:
    version: int
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple = ()


def dir_fingerprint(path: str) -> tuple:
    """What changes when a push directory is written to (for retrying failed loads)."""
    parts = []
    for sub in ("", "variables", "assets"):
        try:
            parts += [(sub, *entry) for entry in storage.entries(storage.join(path, sub) if sub else path)]
        except OSError:
            continue
    return tuple(parts)


def _load_error(exc: BaseException, path: str) -> Tuple[str, str]:
    """(error code, message) for a failed load, as TF Serving reports it; never
    Python's exception text (the traceback goes to the server's log)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from serving.errors import from_tf_error

    if isinstance(exc, tf.errors.OpError):
        err = from_tf_error(exc)
        return err.code, err.message
    graph = os.path.join(path, "saved_model.pb")
    if isinstance(exc, (OSError, DecodeError)) and os.path.isfile(graph):
        return "DATA_LOSS", f"Can't parse {graph} as binary proto"   # TensorFlow's words
    if isinstance(exc, OSError):
        return "NOT_FOUND", (f"Could not find SavedModel .pb or .pbtxt at supplied export "
                             f"directory path: {path}")
    if isinstance(exc, RuntimeError) and "MetaGraphDef" in str(exc):
        return "NOT_FOUND", str(exc)
    return "UNKNOWN", f"Could not load the SavedModel at {path}; the server's log has the details"


# ------------------------------------------------------------------ the manager
class ModelManager:
    """Versions of one model: discovery, policy, load/unload, lookup and status."""
    traffic_split = None    # serving.traffic_split.TrafficSplit: routes requests naming no version (None: off)
    stable_label, canary_label = "stable", "canary"    # core.served.default_version's labels (the settings')

    def __init__(self, name: str, base_path: str, policy: VersionPolicy = VersionPolicy("latest"),
                 labels: Optional[Dict[str, int]] = None, poll_seconds: float = 1.0,
                 listener: Optional[Callable[[str, int, str], None]] = None,
                 threads: Optional[SessionThreads] = None, integrity: Optional[IntegrityPolicy] = None,
                 on_refused: Optional[Callable[[int, VersionIntegrity], None]] = None,
                 reads_domain: bool = True):
        self.name = name
        self.reads_domain = reads_domain    # each version's input domain (out_of_domain_action is not off)
        self.integrity = integrity or IntegrityPolicy()
        self.on_refused = on_refused
        self.threads = threads or SessionThreads()
        self.base_path = str(base_path)
        self.policy = policy
        self.labels = dict(labels or {})
        self.poll_seconds = poll_seconds
        self.listener = listener
        self._lock = threading.Condition()
        self._loaded: Dict[int, ModelVersion] = {}     # AVAILABLE versions
        self._status: Dict[int, VersionStatus] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._scanning = threading.Lock()        # one scan at a time (the watcher, a config reload)
        self._latest: Optional[ModelVersion] = None    # answers requests naming no version (core.served)
        self._canary: Optional[ModelVersion] = None    # the canary label's version, loaded

    # ------------------------------------------------ lifecycle
    def start(self, wait_seconds: float = 0.0) -> None:
        """Load what the policy wants now (blocking), then watch the directory (every
        ``poll_seconds``; 0 or less: scanned once, as TF Serving's --file_system_poll_wait_seconds=0)."""
        self.poll_once()
        if self.poll_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._watch, name=f"model-watcher-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, wait_seconds: float = UNLOAD_WAIT_SECONDS) -> None:
        """Stop watching; unload every version, waiting at most ``wait_seconds`` in
        all for the calls still holding them (see ``_unload``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            versions = list(self._loaded)
        deadline = time.time() + wait_seconds
        for v in versions:
            self._unload(v, max(0.0, deadline - time.time()))

    def _watch(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:   # noqa: BLE001 - the watcher must survive anything
                log.exception("model directory scan failed")

    # ------------------------------------------------ discovery and policy
    def _loadable(self, on_disk: List[int]) -> List[int]:
        """Versions on disk that have not failed to load in their current form."""
        out = []
        for v in on_disk:
            st = self._status.get(v)
            if st is not None and st.state == END and st.error_code != "OK":
                if st.fingerprint == dir_fingerprint(self._path(v)):
                    continue       # failed, and unchanged since
            out.append(v)
        return out

    def _path(self, version: int) -> str:
        return os.path.join(self.base_path, str(version))

    def poll_once(self) -> None:
        """One scan: load newly wanted versions, then unload the unwanted ones."""
        with self._scanning:
            self._scan()

    def _scan(self) -> None:
        on_disk = existing_versions(self.base_path)
        wanted = self._load_wanted(on_disk)
        for version in list(self._loaded):
            if version not in wanted and (wanted & set(self._loaded)
                                          or version not in on_disk):
                self._unload(version)
        with self._lock:
            for v in [v for v, st in self._status.items()
                      if v not in on_disk and st.state == END and v not in self._loaded]:
                if len(self._status) > 50:
                    del self._status[v]

    def _load_wanted(self, on_disk: List[int]) -> set:
        """Load the versions the policy wants; when one fails, the policy chooses
        again among the loadable rest, in the same pass (so a broken newest
        version falls back to the newest loadable one before the server listens,
        not a poll later). Returns the versions wanted in the end."""
        tried = set()
        while True:
            wanted = self.policy.select(self._loadable(on_disk))
            missing = [v for v in wanted if v not in self._loaded and v not in tried]
            if not missing:
                return set(wanted)
            for version in missing:
                tried.add(version)
                self._load(version)

    def _set(self, version: int, state: str, code: str = "OK", message: str = "",
             fingerprint: tuple = ()):
        with self._lock:
            self._status[version] = VersionStatus(version, state, code, message, fingerprint)
        if self.listener:
            self.listener(state, version, message)

    def _load(self, version: int) -> None:
        path = self._path(version)
        fingerprint = dir_fingerprint(path)
        self._set(version, LOADING)
        started = time.time()
        if not self._passes_integrity(version, path, fingerprint):
            return
        try:
            loaded = ModelVersion(self.name, version, path, self.threads, self.reads_domain)
            loaded.warm_up()
            replay_warmup_requests(loaded, path)     # before AVAILABLE, as TF Serving (issue 17 part 2)
        except Exception as exc:   # noqa: BLE001 - any failure is reported in the status
            code, message = _load_error(exc, path)
            log.error("model %s version %d failed to load: %s", self.name, version, message,
                      exc_info=code == "UNKNOWN")
            self._set(version, END, code, message, fingerprint)
            return
        loaded.owner = self
        with self._lock:
            self._loaded[version] = loaded
            self._route()
        self._set(version, AVAILABLE)
        log.info("model %s version %d AVAILABLE (loaded in %.1f s)", self.name, version,
                 time.time() - started)

    def _passes_integrity(self, version: int, path: str, fingerprint: tuple) -> bool:
        """Check the version's files against its manifest; a failing version is
        reported (state END, FAILED_PRECONDITION naming the files) and not loaded."""
        started = time.time()
        checked = self.integrity.check(path)
        if checked is None:
            return True
        if checked.ok:
            if checked.has_manifest:
                log.info("model %s version %d matches its manifest (checked in %.3f s)", self.name, version,
                         time.time() - started)
            else:
                log.warning("model %s version %d has no integrity manifest (pushed before manifests or by "
                            "another tool): served unverified; push it again to cover it", self.name, version)
            return True
        message = (f"version {version} of model {self.name} failed its integrity check and is not loaded: "
                   f"{checked.summary()}. Fix: {INTEGRITY_FIX}")
        log.error("model %s version %d REFUSED: %s", self.name, version, message)
        self._set(version, END, "FAILED_PRECONDITION", message, fingerprint)
        if self.on_refused is not None:
            self.on_refused(version, checked)
        return False

    def _unload(self, version: int, wait_seconds: float = UNLOAD_WAIT_SECONDS) -> None:
        """Stop serving ``version``; close it once the calls holding it are done
        (waiting up to ``wait_seconds``; a session is never closed under a running
        call: the last call to release a version retired meanwhile closes it)."""
        with self._lock:
            loaded = self._loaded.pop(version, None)
            self._route()
        if loaded is None:
            return
        self._set(version, UNLOADING)
        deadline = time.time() + wait_seconds
        with self._lock:
            while loaded.refs > 0 and time.time() < deadline:
                self._lock.wait(timeout=0.5)
            if loaded.refs > 0:
                loaded.retired = True
                log.warning("model %s version %d unloaded with %d call(s) still running: "
                            "its session closes when they return", self.name, version, loaded.refs)
        if not loaded.retired:
            loaded.close()
        self._set(version, END)
        log.info("model %s version %d unloaded", self.name, version)

    # ------------------------------------------------ served configuration
    def set_labels(self, labels: Dict[str, int]) -> None:
        """Replace the version labels (effective for the next request)."""
        with self._lock:
            self.labels = dict(labels)
            self._route()

    def use_label_names(self, stable_label: str, canary_label: str) -> None:
        """The labels naming the stable and the canary version (settings stable_label, canary_label)."""
        with self._lock:
            self.stable_label, self.canary_label = stable_label, canary_label
            self._route()

    def _route(self) -> None:
        """Precompute (under the lock) the version answering requests naming no version
        (core.served.default_version) and the loaded canary, so a request only reads them."""
        chosen = default_version(self._loaded, self.labels, self.stable_label, self.canary_label)
        self._latest = self._loaded.get(chosen) if chosen is not None else None
        self._canary = self._loaded.get(self.labels.get(self.canary_label))

    def set_policy(self, policy: VersionPolicy) -> None:
        """Replace the version policy: the versions it wants load (and the others
        unload) at the next directory scan."""
        self.policy = policy

    # ------------------------------------------------ requests
    def acquire(self, name: str, version: Optional[int] = None,
                label: Optional[str] = None) -> ModelVersion:
        """The version a request asks for, held until ``release``. Raises ServingError."""
        if name != self.name:
            raise servable_not_found(name, version)
        version = self._labelled(label, version)
        with self._lock:
            if version is None:                         # the stable label's, else the newest non-canary
                loaded = self._latest
                if self._canary is not None and self.traffic_split is not None and self.traffic_split.takes_canary():
                    loaded = self._canary
            else:
                loaded = self._loaded.get(version)
            if loaded is None:
                raise servable_not_found(name, version)
            loaded.refs += 1
        return loaded

    def _labelled(self, label: Optional[str], version: Optional[int]) -> Optional[int]:
        """The version a label stands for (TF Serving's error for an unknown label)."""
        if not label:
            return version
        if label not in self.labels:
            raise invalid(f"Unrecognized servable version label: {label}")
        return self.labels[label]

    def release(self, loaded: ModelVersion) -> None:
        with self._lock:
            loaded.refs -= 1
            last = loaded.refs <= 0
            if last:
                self._lock.notify_all()
        if last and loaded.retired:
            loaded.close()

    def available_versions(self) -> List[int]:
        with self._lock:
            return sorted(self._loaded)

    # ------------------------------------------------ status
    def status(self, name: str, version: Optional[int] = None,
               label: Optional[str] = None) -> List[VersionStatus]:
        """ModelService.GetModelStatus, newest first. Raises ServingError like TF Serving."""
        if name != self.name:
            raise not_found(f"Could not find any versions of model {name}")
        version = self._labelled(label, version)
        with self._lock:
            states = {v: VersionStatus(**vars(s)) for v, s in self._status.items()}
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        return [states[v] for v in sorted(states, reverse=True)]


def servable_not_found(name: str, version: Optional[int]):
    """TF Serving's NOT_FOUND for a servable request, Latest or Specific."""
    if version is None:
        return not_found(f"Servable not found for request: Latest({name})")
    return not_found(f"Servable not found for request: Specific({name}, {version})")
