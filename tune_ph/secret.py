"""The per-user secret key: MACs what this user's runs wrote (origin.json, Ray's pickles, cache entries).

A hash anyone can recompute proves nothing about who wrote a file: a received experiment folder or a shared cache
can carry a forged origin.json or a planted cache entry with a matching plain hash. A MAC under a key that never
leaves this user's config folder (0600, outside every experiment and cache) can only have been made by this user.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from tune_ph.errors import InputError

CONFIG_ENV = "TUNE_PH_CONFIG"  # moves the config folder (tests; a machine whose home is shared)
KEY_FILE = "secret.key"
KEY_BYTES = 32

_cached: dict[Path, bytes] = {}


def config_dir() -> Path:
    """$TUNE_PH_CONFIG, else $XDG_CONFIG_HOME/tune_ph, else ~/.config/tune_ph."""
    given = os.environ.get(CONFIG_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "tune_ph"


def key_path() -> Path:
    return config_dir() / KEY_FILE


def _create(path: Path) -> None:
    """Write a new key 0600 under a temp name, then link it into place: a concurrent creator's key wins whole."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".{KEY_FILE}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process made one first: then that one is used
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def key() -> bytes:
    """This user's key, created on first use. A key others can read or write proves nothing: refused, naming it."""
    path = key_path()
    if path in _cached:
        return _cached[path]
    if not os.path.lexists(path):
        try:
            _create(path)
        except OSError as err:
            raise InputError(f"{path}: cannot create the secret key ({err.strerror}); set {CONFIG_ENV}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise InputError(f"{path}: cannot read the secret key ({err.strerror}); remove it to make a new one") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise InputError(
                f"{path}: the secret key must be a regular file of yours that only you can read (chmod 600 it, "
                "or remove it to make a new one: your caches are then recomputed)"
            )
        data = fh.read(KEY_BYTES + 1)
    if len(data) != KEY_BYTES:
        raise InputError(f"{path}: not a secret key ({len(data)} bytes, not {KEY_BYTES}); remove it to make a new one")
    _cached[path] = data
    return data


def mac(purpose: str, payload: bytes) -> str:
    """HMAC-SHA256 of payload under this user's key, bound to its purpose (an origin MAC is no cache MAC)."""
    return hmac.new(key(), purpose.encode() + b"\x00" + payload, hashlib.sha256).hexdigest()


def verify(purpose: str, payload: bytes, tag: object) -> bool:
    """Whether tag is this user's MAC of payload (constant-time)."""
    return isinstance(tag, str) and hmac.compare_digest(mac(purpose, payload), tag)
