"""Secrets read from the environment: the HMAC keys of the model manifests and of
the audit trail, and the salt of the request logs' hashed features. Each setting
names an environment variable (``*_key_env``, ``log_hash_salt_env``); the value is
read where it is used and never written anywhere.

A secret shorter than ``MIN_SECRET_BYTES`` is refused (``SecretError`` naming the
variable): a one-character key or salt is guessed in a few hundred tries."""
import os
from typing import Mapping, Optional

MIN_SECRET_BYTES = 16


class SecretError(ValueError):
    """A secret in the environment too short to protect anything: names the variable and the fix."""


def key_from_env(name: str, purpose: str, environ: Optional[Mapping[str, str]] = None) -> Optional[bytes]:
    """The bytes of the environment variable ``name``; None if ``name`` is empty or the
    variable unset or empty; ``SecretError`` if shorter than ``MIN_SECRET_BYTES``.
    ``purpose`` says in the message what the secret is for (and its setting)."""
    environ = os.environ if environ is None else environ
    value = environ.get(name, "").encode() if name else b""
    if value and len(value) < MIN_SECRET_BYTES:
        raise SecretError(f"the environment variable {name} ({purpose}) holds {len(value)} bytes: use at least "
                          f"{MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`), or unset it")
    return value or None
