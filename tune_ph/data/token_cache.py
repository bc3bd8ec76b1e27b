"""The on-disk token cache: where it lives, its size cap (least recently used entries go first), list and clear."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_ph.errors import InputError

log = logging.getLogger(__name__)

CACHE_ENV = "TUNE_PH_CACHE"
MAX_GB_ENV = "TUNE_PH_CACHE_MAX_GB"
DEFAULT_MAX_GB = 5.0
# tokens.build names an entry <fingerprint>-L<max_length>-n<max_sets>-s<split hash>-v<format>.npz.
_ENTRY = re.compile(r"^(?P<fp>[0-9a-f]+)-L(?P<length>\d+)-n(?P<sets>\d+)-s(?P<split>[0-9a-f]+)-v(?P<format>\d+)\.npz$")
# A write that crashed leaves <entry>.<random>.tmp; one this old is not being written any more.
_STALE_TEMP_S = 3600


@dataclass
class Entry:
    """One cached tokenized dataset."""

    path: Path
    size: int  # bytes
    last_used: float  # epoch seconds: written or last read (tokens.build touches an entry on every hit)
    fingerprint: str  # of the cleaned samples (tokens.fingerprint)
    max_length: int
    max_sets: int

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.last_used) / 86400


def default_cache_dir() -> Path:
    """Where token caches live: $TUNE_PH_CACHE, else ~/.cache/tune_ph/tokens."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tune_ph" / "tokens"


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    """A TrainConfig.cache_dir (None: the default) as a path."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def max_bytes() -> int:
    """The cache cap from $TUNE_PH_CACHE_MAX_GB (GiB, default 5); a value that is not a positive size is an error."""
    raw = os.environ.get(MAX_GB_ENV)
    if raw is None or not raw.strip():
        return int(DEFAULT_MAX_GB * 2**30)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"{MAX_GB_ENV}={raw!r} is not a cache size in GiB; set a positive number such as "
            f"{DEFAULT_MAX_GB:g} (the default) or 0.5, or unset it"
        )
    return int(value * 2**30)


def entries(folder: Path) -> list[Entry]:
    """The cache entries in a folder, least recently used first (files of other names are not ours: ignored)."""
    out = []
    for path in folder.glob("*.npz") if folder.is_dir() else ():
        match = _ENTRY.match(path.name)
        try:
            st = path.stat()
        except OSError:  # removed meanwhile by another process
            continue
        if match:
            out.append(Entry(path, st.st_size, st.st_mtime, match["fp"], int(match["length"]), int(match["sets"])))
    return sorted(out, key=lambda e: (e.last_used, e.path.name))


def touch(path: Path) -> None:
    """Mark an entry as just used (its mtime: atime is often not kept, noatime/relatime mounts)."""
    try:
        os.utime(path)
    except OSError:  # read-only cache folder: eviction order is then by write time
        pass


def _remove(entry: Entry) -> bool:
    try:
        entry.path.unlink()
    except FileNotFoundError:
        return False  # another process removed it first
    return True


def remove_stale_temp(folder: Path) -> None:
    """Temp files of writes that crashed (a killed run): no one will ever rename them."""
    now = time.time()
    for tmp in folder.glob("*.tmp") if folder.is_dir() else ():
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            continue


def enforce_cap(folder: Path, limit: int, keep: Path | None = None) -> list[Entry]:
    """Remove least recently used entries until the folder holds at most `limit` bytes; returns those removed.

    `keep` (the entry just written, which the run is using) is never removed, even when it alone exceeds the cap.
    """
    remove_stale_temp(folder)
    current = entries(folder)
    total = sum(e.size for e in current)
    removed = []
    for entry in current:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        if _remove(entry):
            removed.append(entry)
        total -= entry.size
    if removed:
        log.info(
            "token cache %s over its %g GiB cap (%s): removed %d least recently used entr%s (%.1f MiB)",
            folder,
            limit / 2**30,
            MAX_GB_ENV,
            len(removed),
            "y" if len(removed) == 1 else "ies",
            sum(e.size for e in removed) / 2**20,
        )
    if total > limit:
        log.warning(
            "token cache %s holds %.1f GiB, above its cap: the entry in use is larger than the cap",
            folder,
            total / 2**30,
        )
    return removed


def clear(folder: Path, older_than_days: float | None = None) -> list[Entry]:
    """Remove every entry, or those last used more than `older_than_days` ago; returns those removed."""
    now = time.time()
    remove_stale_temp(folder)
    chosen = [e for e in entries(folder) if older_than_days is None or e.age_days(now) > older_than_days]
    return [e for e in chosen if _remove(e)]


def _age(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} d"
    if days * 24 >= 1:
        return f"{days * 24:.1f} h"
    return f"{days * 1440:.0f} min"


def listing(folder: Path) -> str:
    """The entries as a table (name, size, age since last use, dataset fingerprint, length, sets) and the total."""
    found = entries(folder)
    cap = f"cap {max_bytes() / 2**30:g} GiB, set by {MAX_GB_ENV}"
    if not found:
        return f"{folder}: no cached token arrays ({cap})"
    now = time.time()
    lines = [f"{'size':>11}  {'last used':>9}  {'dataset':12}  {'length':>6}  {'sets':>4}  file"]
    for e in reversed(found):  # most recently used first
        lines.append(
            f"{e.size / 2**20:7.1f} MiB  {_age(e.age_days(now)):>9}  {e.fingerprint[:12]:12}  {e.max_length:>6}  "
            f"{e.max_sets:>4}  {e.path.name}"
        )
    total = sum(e.size for e in found)
    lines.append(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {total / 2**20:.1f} MiB in {folder} ({cap})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ `python -m tune_ph data cache`


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days >= 0 (e.g. --older-than 30)")
    return value


def add_command(sub: Any) -> None:
    """The `cache {list,clear}` subcommand on a subparsers object."""
    c = sub.add_parser("cache", help="list or clear the token cache (capped by $TUNE_PH_CACHE_MAX_GB, default 5)")
    what = c.add_subparsers(dest="cache_command", required=True)
    for name, text in (("list", "entries with size, age and dataset"), ("clear", "remove entries")):
        p = what.add_parser(name, help=text)
        p.add_argument("--cache-dir", help=f"the cache folder (default: ${CACHE_ENV} or ~/.cache/tune_ph/tokens)")
        if name == "clear":
            p.add_argument("--older-than", type=_days, metavar="DAYS", help="only entries unused for over DAYS days")


def run_command(args: argparse.Namespace) -> None:
    """Run a parsed `cache` subcommand, printing what it found or removed."""
    folder = cache_folder(args.cache_dir)
    if args.cache_command == "list":
        print(listing(folder))
        return
    removed = clear(folder, args.older_than)
    age = f" unused for over {args.older_than:g} days" if args.older_than is not None else ""
    size = sum(e.size for e in removed) / 2**20
    print(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}{age} ({size:.1f} MiB) from {folder}")
