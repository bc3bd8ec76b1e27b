"""FASTA builder: reads/{study_name}/{sample_id}.fasta[.gz] + a metadata CSV -> a dataset in the hub layout."""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tune_ph.errors import DatasetError
from tune_ph.progress import bar_disable

log = logging.getLogger(__name__)


class NotRegularFileError(DatasetError):
    """A FASTA path that is a FIFO, device or socket: never read (it would block or never end)."""


DEFAULT_MAX_DNA = 250_000
# Characters read at a time: a line longer than this (a 1 GiB read) is taken piece by piece, never whole.
_CHUNK = 1 << 20
FASTA_SUFFIXES = (".fasta.gz", ".fasta", ".fa.gz", ".fa", ".fna.gz", ".fna")
# The columns and types of the published dataset (jedick/microbial-DNA-pH), as the builder writes them.
PARQUET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("study_name", pa.string()),
        ("pH", pa.float64()),
        ("sequences", pa.list_(pa.string())),
        ("num_sequences", pa.int64()),
        ("total_DNA_length", pa.int64()),
        ("sample", pa.string()),
        ("environment", pa.string()),
        ("Bacteria", pa.int64()),
        ("Archaea", pa.int64()),
    ]
)


def open_regular(path: Path) -> IO[bytes]:
    """The file opened for reading if it is a regular file; DatasetError otherwise (a FIFO would block the reader
    forever, a device such as /dev/zero would feed it forever). Checked on the opened file: no race with a rename."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a plain open blocks on a FIFO until a writer comes
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open it ({exc.strerror}); replace or remove the file") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFileError(f"{path}: not a regular file (a FIFO, device or socket); replace or remove it")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def is_regular(path: Path) -> bool:
    """Whether path (links followed) is a regular file; other kinds are logged as skipped."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = False
    if not regular and sample_id_of(path) is not None:
        log.warning("%s: skipped, not a regular file (a FIFO, device, socket or broken link)", path)
    return regular


def _pieces(text: IO[str]) -> Iterator[tuple[bool, str]]:
    """(True, "") at each record's header, else (False, a piece of sequence of at most _CHUNK characters) of a FASTA
    text stream; headers and ';' comments are skipped without being kept, however long their lines are."""
    line_start, mode = True, "sequence"  # mode of the current line: header, comment or sequence
    while piece := text.readline(_CHUNK):
        ends_line = piece.endswith("\n")
        if line_start:
            piece = piece.lstrip()
            if not piece and ends_line:  # a blank line
                continue
            mode = "header" if piece.startswith(">") else "comment" if piece.startswith(";") else "sequence"
            if mode == "header":
                yield True, ""
        if ends_line:
            piece = piece.rstrip()
        line_start = ends_line
        if mode == "sequence" and piece:
            yield False, piece


def read_fasta(path: str | os.PathLike, max_dna: int | None = None) -> list[str]:
    """Reads of a FASTA file (plain or .gz), in file order, whole reads until ``max_dna`` bases in total.

    Streamed: reading stops once the cap is reached, and no more than the cap (plus one chunk) is ever held, however
    long a line is. A read longer than the whole cap, when it comes first, keeps its start rather than nothing.
    """
    path = Path(path)
    gz = path.name.endswith(".gz")
    reads: list[str] = []
    current: list[str] = []  # the pieces of the read being assembled
    total = current_len = 0
    started = False
    try:
        with open_regular(path) as raw:
            binary: IO[bytes] = gzip.GzipFile(fileobj=raw) if gz else raw
            for header, piece in _pieces(io.TextIOWrapper(binary, encoding="latin-1", newline=None)):
                if header:
                    if current_len:
                        reads.append("".join(current))
                        total += current_len
                    current, current_len, started = [], 0, True
                    continue
                if not started:
                    raise DatasetError(f"{path}: not FASTA (sequence before the first '>' header)")
                current.append(piece)
                current_len += len(piece)
                if max_dna is not None and total + current_len > max_dna:
                    # The cap falls inside this read: it is not taken (unless it is the first: then its start).
                    if not reads:
                        reads.append("".join(current)[:max_dna])
                    return reads
            if current_len:
                reads.append("".join(current))
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, unreadable
        raise DatasetError(
            f"{path}: cannot read it as FASTA{' (gzip)' if gz else ''} "
            f"({type(exc).__name__}: {exc}); replace or remove the file"
        ) from None
    return reads


def sample_id_of(path: Path) -> str | None:
    """The sample id a FASTA file name stands for (its name without the FASTA suffix), or None."""
    for suffix in FASTA_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def build_dataset(
    fasta_dir: str | os.PathLike,
    metadata: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_dna: int = DEFAULT_MAX_DNA,
    rows_per_shard: int = 2000,
) -> dict:
    """Write a hub-layout dataset (out/data/train-*.parquet) from FASTA_DIR/{study}/{sample}.fasta[.gz] + a CSV."""
    fasta_dir, metadata, out = Path(fasta_dir), Path(metadata), Path(out)
    if not fasta_dir.is_dir():
        raise DatasetError(f"--fasta-dir {fasta_dir}: no such folder")
    meta = _read_metadata(metadata)
    found = _fasta_files(fasta_dir)

    rows, without_reads = [], []
    wanted = set()
    for rec in tqdm(meta.to_dict("records"), desc="reading FASTA", unit="sample", disable=bar_disable(len(meta) >= 50)):
        key = (str(rec["study_name"]).strip(), str(rec["sample_id"]).strip())
        wanted.add(key)
        path = found.get(key)
        reads = read_fasta(path, max_dna) if path is not None else []
        if reads:
            rows.append(_sample_row(key, rec, reads))
        else:
            without_reads.append(f"{key[0]}/{key[1]}")
    without_metadata = [f"{s}/{k}" for (s, k) in found if (s, k) not in wanted]
    if without_reads:
        log.warning(
            "%d sample(s) in the metadata have no reads, e.g. %s", len(without_reads), ", ".join(without_reads[:5])
        )
    if without_metadata:
        log.warning(
            "%d FASTA file(s) have no metadata row, e.g. %s", len(without_metadata), ", ".join(without_metadata[:5])
        )
    if not rows:
        raise DatasetError(
            f"no sample of {metadata} has reads under {fasta_dir}/{{study_name}}/{{sample_id}}.fasta[.gz]"
        )
    n_shards = _write_shards(rows, out / "data", rows_per_shard)
    summary = {
        "samples": len(rows),
        "reads": sum(r["num_sequences"] for r in rows),
        "bases": sum(r["total_DNA_length"] for r in rows),
        "shards": n_shards,
        "without_reads": without_reads,
        "without_metadata": without_metadata,
        "out": str(out),
    }
    return summary


def _read_metadata(metadata: Path) -> pd.DataFrame:
    """The metadata CSV: the needed columns, pH as numbers (NaN: unknown), one row per study/sample (first kept)."""
    try:
        meta = pd.read_csv(metadata, dtype={"sample_id": str, "study_name": str})
    except (OSError, ValueError) as exc:
        raise DatasetError(f"--metadata {metadata}: cannot read it as CSV ({exc})") from exc
    need = ("sample_id", "study_name", "environment", "pH")
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise DatasetError(f"{metadata}: missing column(s) {', '.join(missing)}; the CSV needs {', '.join(need)}")

    ph = pd.to_numeric(meta["pH"], errors="coerce")
    bad_ph = ph.isna() & meta["pH"].notna()  # empty / NA is a missing pH; anything else must be a number
    meta["pH"] = ph
    if bad_ph.any():
        first = meta.loc[bad_ph].iloc[0]
        raise DatasetError(
            f"{metadata}: sample_id {first['sample_id']!r}: field 'pH' is not a number "
            f"({int(bad_ph.sum())} such row(s)); use a number, or leave it empty / NA for unknown"
        )
    keys = meta["study_name"].astype(str).str.strip() + "/" + meta["sample_id"].astype(str).str.strip()
    if keys.duplicated().any():
        dups = keys[keys.duplicated()].tolist()
        log.warning(
            "%s: %d duplicate row(s) ignored (first one kept), e.g. %s", metadata, len(dups), ", ".join(dups[:5])
        )
        meta = meta.loc[~keys.duplicated()]
    return meta


def _fasta_files(fasta_dir: Path) -> dict[tuple[str, str], Path]:
    """(study_name, sample_id) -> its FASTA file under FASTA_DIR/{study}/ (the first by name when several)."""
    found: dict[tuple[str, str], Path] = {}
    for study_dir in sorted(p for p in fasta_dir.iterdir() if p.is_dir()):
        for f in sorted(study_dir.iterdir()):
            key = sample_id_of(f)
            if key is not None and (study_dir.name, key) not in found and is_regular(f):
                found[(study_dir.name, key)] = f
    return found


def _sample_row(key: tuple[str, str], rec: dict, reads: list[str]) -> dict:
    """One dataset row (PARQUET_SCHEMA) of a sample's metadata record and reads."""
    ph = rec["pH"]
    return {
        "sample_id": key[1],
        "study_name": key[0],
        "pH": None if pd.isna(ph) else float(ph),
        "sequences": reads,
        "num_sequences": len(reads),
        "total_DNA_length": sum(map(len, reads)),
        "sample": None if pd.isna(rec.get("sample")) else str(rec.get("sample")),
        "environment": None if pd.isna(rec["environment"]) else str(rec["environment"]),
        "Bacteria": _optional_int(rec.get("Bacteria")),
        "Archaea": _optional_int(rec.get("Archaea")),
    }


def _write_shards(rows: list[dict], data_dir: Path, rows_per_shard: int) -> int:
    """The rows as data_dir/train-*.parquet shards, each written atomically; the number of shards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("train-*.parquet"):  # a rebuild must not leave shards of an older build
        old.unlink()
    n_shards = max(1, math.ceil(len(rows) / rows_per_shard))
    for k in range(n_shards):
        chunk = rows[k * rows_per_shard : (k + 1) * rows_per_shard]
        table = pa.Table.from_pylist(chunk, schema=PARQUET_SCHEMA)
        target = data_dir / f"train-{k:05d}-of-{n_shards:05d}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    return n_shards


def _optional_int(value) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
