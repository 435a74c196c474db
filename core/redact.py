"""Request logs as sensitive data: features left out of or hashed in every logged
record, and owner-only files for what holds request rows.

Settings (``core.config``, issue 16 part 6):

* ``log_drop_features``: raw features removed from every logged row: the feature
  of each tf.Example, the input tensor of that name (``serving_raw``), the model
  output derived from it (``<name>_xf`` of ``transform_features``), its name in the
  record's out-of-domain mark (``core.request_log.OUT_OF_DOMAIN_TAG``);
* ``log_hash_features``: raw features whose values are replaced by
  ``HMAC-SHA256(salt, value)``'s first ``HASH_HEX_CHARS`` hex digits (a string:
  equal values stay equal, so counts and joins by value still work; a value
  cannot be read back without the salt, and guessing it needs the salt too);
* ``log_hash_salt_env``: the environment variable holding the salt; hashing
  without it is refused when the server or proxy starts (``ConfigError``).

A value is hashed as its text: a string's bytes, an integer's decimal digits, a
float's nearest float32 printed with 9 significant digits (how a tf.Example and a
float tensor both hold it), so one value hashes alike whichever way it was sent.

``Redaction.record`` runs on the request-log writer's thread (``serving.log_writer``)
on each finished record, so the REST and gRPC front ends and both proxies are
covered, rejected calls too: a rejected call's error message that names a
redacted feature has its quoted parts and numbers masked (the values it may
echo), and a dropped feature's name replaced. With both lists empty there is no
``Redaction`` and the writer does nothing more.

The monitor leaves ``redacted_features`` out of its skew, drift and anomaly
checks (``monitoring.redacted``). Feedback spans are built from the logged rows:
``config.load`` refuses ``retrain_with_feedback`` with a model input redacted
(``settings_problem``).

Owner-only files: ``private_dir`` (0700) and ``open_private`` (0600), whatever the
umask, for the request logs, the monitor's labelled spans and the redacted logs'
readers to rely on.
"""
import dataclasses
import functools
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Union

from core import features as F
from core.request_log import DT_STRING, ERROR_OUTPUT, OUT_OF_DOMAIN_TAG
from core.secrets import SecretError, key_from_env

HASH_HEX_CHARS = 16            # 64 bits of the HMAC: collisions among a feature's values are negligible
DIR_MODE, FILE_MODE = 0o700, 0o600
MASK = "<redacted>"
DROPPED_NAME = "<dropped feature>"


@functools.lru_cache(maxsize=1)
def _example_class():
    from tensorflow.core.example import example_pb2

    return example_pb2.Example
_VALUES_IN_MESSAGE = re.compile(r"'[^']*'|\"[^\"]*\"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class RedactionError(ValueError):
    """Redaction settings that cannot run (a salt missing): names the setting and the fix."""


def redacted_features(settings) -> FrozenSet[str]:
    """The raw features the request logs do not hold as sent: dropped and hashed."""
    return frozenset(settings.log_drop_features) | frozenset(settings.log_hash_features)


def settings_problem(values: Dict) -> Optional[str]:
    """What is wrong with the redaction settings in ``values`` (``config.load``'s
    parsed settings), or None: a name that is no raw feature, a feature both dropped
    and hashed, a model input redacted while feedback spans feed retraining."""
    drop, hashed = list(values.get("log_drop_features", [])), list(values.get("log_hash_features", []))
    for setting, names in (("log_drop_features", drop), ("log_hash_features", hashed)):
        unknown = [n for n in names if n not in F.RAW_FEATURE_TYPES]
        if unknown:
            return (f"setting '{setting}' names {', '.join(unknown)}, not a raw feature; raw features: "
                    f"{', '.join(sorted(F.RAW_FEATURE_TYPES))}")
    both = sorted(set(drop) & set(hashed))
    if both:
        return f"{', '.join(both)} is in both log_drop_features and log_hash_features: choose one"
    needed = sorted((set(drop) | set(hashed)) & set(F.MODEL_FEATURES))
    if needed and values.get("retrain_with_feedback", True):
        return (f"the request logs would not hold {', '.join(needed)} as sent (log_drop_features / "
                f"log_hash_features), which the model takes: feedback spans built from them would retrain it "
                f"on missing or hashed values. Set retrain_with_feedback=false, or redact only features the "
                f"model does not take: {', '.join(sorted(set(F.RAW_FEATURE_TYPES) - set(F.MODEL_FEATURES)))}")
    return None


# ------------------------------------------------------------------ owner-only files
def private_dir(path: Union[str, Path]) -> Path:
    """``path`` created if needed and set to 0700 (owner only), whatever the umask."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Union[str, Path], flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with mode 0600, whatever the umask; the fd."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------------ the redaction
@dataclasses.dataclass(frozen=True)
class Redaction:
    """What to do to each logged record: features to drop, features to hash with ``salt``."""
    drop: FrozenSet[str]
    hashed: FrozenSet[str]
    salt: bytes = b""

    @classmethod
    def from_settings(cls, settings, environ=None) -> Optional["Redaction"]:
        """The settings' redaction, None when nothing is redacted; ``RedactionError``
        naming the variable when features are hashed and ``log_hash_salt_env`` is unset."""
        drop, hashed = frozenset(settings.log_drop_features), frozenset(settings.log_hash_features)
        if not drop and not hashed:
            return None
        try:
            salt = key_from_env(settings.log_hash_salt_env, "the request logs' hashing salt, setting "
                                "log_hash_salt_env", environ) if hashed else None
        except SecretError as exc:
            raise RedactionError(str(exc)) from None
        if hashed and not salt:
            raise RedactionError(
                f"log_hash_features ({', '.join(sorted(hashed))}) needs a salt: set the environment variable "
                f"{settings.log_hash_salt_env} (log_hash_salt_env) to a secret of your own, the same for every "
                f"server whose logs are compared, or clear log_hash_features")
        return cls(drop, hashed, salt or b"")

    @functools.cached_property
    def names(self) -> FrozenSet[str]:
        return self.drop | self.hashed

    @functools.cached_property
    def derived_outputs(self) -> FrozenSet[str]:
        """Model outputs computed from a redacted feature (``transform_features``)."""
        return frozenset(F.transformed_name(f) for f in self.names)

    def hash_text(self, text: bytes) -> bytes:
        """The logged stand-in of a value's text."""
        return hmac.new(self.salt, text, hashlib.sha256).hexdigest()[:HASH_HEX_CHARS].encode()

    def record(self, data: bytes) -> bytes:
        """A serialized PredictionLog with the redacted features dropped or hashed."""
        from tensorflow_serving.apis import prediction_log_pb2

        log = prediction_log_pb2.PredictionLog.FromString(data)
        self._out_of_domain_mark(log.log_metadata.saved_model_tags)
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            self._predict(log.predict_log.request, log.predict_log.response)
        elif kind in ("classify_log", "regress_log"):
            self._input(getattr(log, kind).request.input)
        return log.SerializeToString()

    def _out_of_domain_mark(self, tags) -> None:
        """The out-of-domain mark (``core.request_log.OUT_OF_DOMAIN_TAG``) without the dropped features."""
        if not self.drop:
            return
        for i in reversed(range(len(tags))):
            if tags[i].startswith(OUT_OF_DOMAIN_TAG):
                kept = [f for f in tags[i][len(OUT_OF_DOMAIN_TAG):].split(",") if f and f not in self.drop]
                if kept:
                    tags[i] = OUT_OF_DOMAIN_TAG + ",".join(kept)
                else:
                    del tags[i]

    def _predict(self, request, response) -> None:
        inputs = request.inputs
        examples_only = len(inputs) == 1 and request.model_spec.signature_name in ("", F.DEFAULT_SIGNATURE)
        for name in list(inputs):
            if name in self.drop:
                del inputs[name]
            elif name in self.hashed:
                self._hash_tensor(inputs[name])
            elif inputs[name].dtype == DT_STRING and (name == "examples" or examples_only):
                self._examples_tensor(inputs[name])
        for name in list(response.outputs):
            if name in self.derived_outputs:
                del response.outputs[name]
        if ERROR_OUTPUT in response.outputs:
            error = response.outputs[ERROR_OUTPUT]
            if len(error.string_val) == 2:
                error.string_val[1] = self.message(error.string_val[1])

    def _examples_tensor(self, tensor) -> None:
        """A string tensor's values that are serialized tf.Examples, redacted (other strings kept)."""
        values = list(tensor.string_val)
        redacted = [self.example(v) for v in values]
        if redacted != values:
            del tensor.string_val[:]
            tensor.string_val.extend(redacted)

    def example(self, serialized: bytes) -> bytes:
        """A serialized tf.Example redacted; bytes that are no tf.Example as they are."""
        try:
            example = _example_class().FromString(serialized)
        except Exception:  # noqa: BLE001 - a string that is not an example: a feature value
            return serialized
        if not self._example_in_place(example):
            return serialized
        return example.SerializeToString()

    def _example_in_place(self, example) -> bool:
        features = example.features.feature
        touched = False
        for name in self.names:
            if name not in features:
                continue
            touched = True
            if name in self.drop:
                del features[name]
                continue
            feature = features[name]
            kind = feature.WhichOneof("kind")
            if kind is None:
                continue
            texts = [value_text(v) for v in getattr(feature, kind).value]
            feature.ClearField(kind)
            feature.bytes_list.value.extend(self.hash_text(t) for t in texts)
        return touched

    def _input(self, inp) -> None:
        """A classify/regress ``Input``'s examples (and context) redacted in place."""
        kind = inp.WhichOneof("kind")
        if kind == "example_list":
            examples = list(inp.example_list.examples)
        elif kind == "example_list_with_context":
            examples = list(inp.example_list_with_context.examples) + [inp.example_list_with_context.context]
        else:
            return
        for example in examples:
            self._example_in_place(example)

    def _hash_tensor(self, tensor) -> None:
        """A raw feature's tensor as a string tensor of the same shape, of the values' hashes."""
        import tensorflow as tf

        try:
            values = tf.make_ndarray(tensor).reshape(-1).tolist()
        except Exception:  # noqa: BLE001 - a tensor that cannot be read: logged without values
            values = []
        shape = [d.size for d in tensor.tensor_shape.dim]
        tensor.Clear()
        tensor.dtype = DT_STRING
        for size in shape if values else [0]:
            tensor.tensor_shape.dim.add().size = size
        tensor.string_val.extend(self.hash_text(value_text(v)) for v in values)

    def message(self, text: bytes) -> bytes:
        """A rejected call's error message: when it names a redacted feature, its quoted
        parts and numbers masked and a dropped feature's name replaced."""
        decoded = text.decode("utf-8", "replace")
        if not any(name in decoded for name in self.names):
            return text
        masked = _VALUES_IN_MESSAGE.sub(MASK, decoded)
        for name in self.drop:
            masked = masked.replace(name, DROPPED_NAME)
        return masked.encode("utf-8")



def value_text(value) -> bytes:
    """A feature value's text, as it is hashed (see the module's docstring)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value)).encode()
    import numpy as np

    if isinstance(value, (np.integer,)):
        return str(int(value)).encode()
    return f"{float(np.float32(value)):.9g}".encode()
