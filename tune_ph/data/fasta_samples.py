"""Samples to predict from FASTA files (DIR/{study_name}/{sample_id}.fasta[.gz] or flat), metadata optional."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hyena_dna import tokenizer
from tune_ph.data.fasta import DEFAULT_MAX_DNA, FASTA_SUFFIXES, is_regular, read_fasta, sample_id_of
from tune_ph.errors import DatasetError
from tune_ph.progress import bar_disable

log = logging.getLogger(__name__)

# Columns a metadata CSV may give besides sample_id; anything else in it is ignored.
METADATA_COLUMNS = ("study_name", "environment", "pH")
_PROGRESS_MIN_FILES = 50


def find_fasta_files(fasta_dir: str | os.PathLike) -> list[tuple[str, str, Path]]:
    """(study_name, sample_id, path) of every FASTA file directly in fasta_dir (study "") or one folder down."""
    root = Path(fasta_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"--fasta-dir {fasta_dir}: no such folder")
    found: list[tuple[str, str, Path]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found += [
                (entry.name, sid, f) for f in sorted(entry.iterdir()) if (sid := sample_id_of(f)) and is_regular(f)
            ]
        elif (sid := sample_id_of(entry)) is not None and is_regular(entry):  # a FIFO would block predict forever
            found.append(("", sid, entry))
    first: dict[str, Path] = {}
    for _, sid, path in found:
        if sid in first:  # predictions are keyed by sample_id alone
            raise DatasetError(f"{path}: sample_id {sid!r} also has the file {first[sid]}; sample ids must be unique")
        first[sid] = path
    if not found:
        raise DatasetError(
            f"--fasta-dir {fasta_dir}: no FASTA files ({', '.join(FASTA_SUFFIXES)}) in it or in its study folders; "
            "expected DIR/{study_name}/{sample_id}.fasta[.gz] or DIR/{sample_id}.fasta[.gz]"
        )
    return found


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """A metadata CSV indexed by sample_id, with whichever of study_name, environment and pH it has."""
    try:
        meta = pd.read_csv(path, dtype={"sample_id": str, "study_name": str, "environment": str})
    except (OSError, ValueError) as exc:
        raise DatasetError(f"--metadata {path}: cannot read it as CSV ({exc})") from exc
    if "sample_id" not in meta.columns:
        raise DatasetError(
            f"--metadata {path}: no sample_id column (found: {', '.join(map(str, meta.columns))}); the CSV needs "
            f"sample_id and may add {', '.join(METADATA_COLUMNS)}"
        )
    meta["sample_id"] = meta["sample_id"].str.strip()
    dup = meta["sample_id"].duplicated(keep=False) & meta["sample_id"].notna()
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())
        raise DatasetError(
            f"--metadata {path}: sample_id {meta['sample_id'].iloc[rows[0]]!r} appears more than once "
            f"(data rows {', '.join(str(r + 1) for r in rows[:5])}); sample ids must be unique"
        )
    if "pH" in meta.columns:
        ph = pd.to_numeric(meta["pH"], errors="coerce")
        bad = ph.isna() & meta["pH"].notna()  # empty / NA is an unknown pH; anything else must be a number
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"--metadata {path}: data row {row + 1} (sample_id {meta['sample_id'].iloc[row]!r}): field 'pH' is "
                f"not a number ({meta['pH'].iloc[row]!r}); use a number, or leave it empty / NA for unknown"
            )
        meta["pH"] = ph
    keep = ["sample_id", *(c for c in METADATA_COLUMNS if c in meta.columns)]
    return meta.loc[meta["sample_id"].notna(), keep].set_index("sample_id")


def _check_dna(path: Path, sample_id: str, reads: list[str]) -> None:
    """Raise DatasetError naming the file, the sample and the read that holds a non-DNA character."""
    try:
        tokenizer.encode("".join(reads))  # one vectorised pass; per read only to name the culprit
    except tokenizer.InvalidSequenceError:
        for k, read in enumerate(reads):
            try:
                tokenizer.encode(read, name=f"read {k + 1}")
            except tokenizer.InvalidSequenceError as exc:
                raise DatasetError(f"{path} (sample {sample_id!r}): {exc}") from None


def read_fasta_dir(
    fasta_dir: str | os.PathLike,
    metadata: str | os.PathLike | None = None,
    *,
    max_dna: int = DEFAULT_MAX_DNA,
    skip_bad_rows: bool = False,
) -> pd.DataFrame:
    """One row per FASTA file: sample_id, study_name, environment, pH, sequences (an unlabelled sample table).

    Reads are whole reads in file order up to ``max_dna`` bases, as the dataset builder keeps them. The study is
    the file's folder ("" for a flat file); metadata (optional CSV keyed by sample_id) adds pH, environment and
    the study of flat files. A file that is not FASTA or has non-DNA reads is an error naming it (skipped with a
    warning when skip_bad_rows); an empty file is kept (and reported when the samples are cleaned).
    """
    files = find_fasta_files(fasta_dir)
    meta = read_metadata(metadata) if metadata is not None else None
    rows: list[dict] = []
    skipped: list[str] = []
    for study, sid, path in tqdm(
        files, desc="reading FASTA", unit="file", disable=bar_disable(len(files) >= _PROGRESS_MIN_FILES)
    ):
        try:
            reads = read_fasta(path, max_dna)
            _check_dna(path, sid, reads)
        except DatasetError as exc:
            if not skip_bad_rows:
                raise DatasetError(f"{exc} (--skip-bad-rows, skip_bad_rows=True: skip such files)") from None
            skipped.append(f"{path} ({textwrap.shorten(str(exc).splitlines()[0], 200, placeholder=' …')})")
            continue
        row = {"sample_id": sid, "study_name": study, "environment": "", "pH": np.nan, "sequences": reads}
        if meta is not None and sid in meta.index:
            given = meta.loc[sid]
            if "study_name" in given and pd.notna(given["study_name"]) and given["study_name"].strip():
                if study and given["study_name"].strip() != study:
                    raise DatasetError(
                        f"{path}: in study folder {study!r}, but --metadata {metadata} gives sample_id {sid!r} the "
                        f"study_name {given['study_name'].strip()!r}; move the file or fix the CSV"
                    )
                row["study_name"] = given["study_name"].strip()
            if "environment" in given and pd.notna(given["environment"]):
                row["environment"] = given["environment"].strip()
            if "pH" in given:
                row["pH"] = float(given["pH"])
        rows.append(row)
    if skipped:
        log.warning("skipped %d unreadable FASTA file(s), e.g. %s", len(skipped), "; ".join(skipped[:3]))
    if meta is not None:
        unmatched = sorted(set(meta.index) - {r["sample_id"] for r in rows})
        if unmatched:
            log.warning(
                "%d sample(s) of %s have no FASTA file under %s, e.g. %s",
                len(unmatched),
                metadata,
                fasta_dir,
                ", ".join(unmatched[:5]),
            )
        missing = sum(r["sample_id"] not in meta.index for r in rows)
        if missing:
            log.info("%d FASTA file(s) have no metadata row (predicted without pH)", missing)
    return pd.DataFrame(rows, columns=["sample_id", "study_name", "environment", "pH", "sequences"])
