"""Feature (ASV) tables as the field writes them (BIOM, QIIME 2 TSV, DADA2 seqtab; FASTA; metadata) -> samples."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from hyena_dna import tokenizer
from tune_ph.data.fasta import open_regular
from tune_ph.errors import DatasetError, InputError
from tune_ph.metrics import DEFAULT_TARGET

log = logging.getLogger(__name__)

# Files read as feature tables (anything else goes to the other sources: parquet, jsonl, folders).
TABLE_SUFFIXES = (".biom", ".tsv", ".csv", ".txt")
# The first header cell of a table with one feature per row (QIIME 2's `biom convert --to-tsv` writes "#OTU ID").
_FEATURE_HEADERS = {"otu id", "otuid", "otu_id", "feature id", "featureid", "feature-id", "feature_id", "asv", "asv id"}
# The first header cell of a table with one sample per row, and of a metadata file (QIIME 2's accepted names).
_SAMPLE_HEADERS = {"id", "sampleid", "sample id", "sample-id", "sample_id", "sample"}
# Metadata columns read besides the id, first match wins (case-insensitive); the rest is ignored.
STUDY_COLUMNS = ("study_name", "study", "study_id", "project_name", "project")
ENVIRONMENT_COLUMNS = ("environment", "env_broad_scale", "env_biome", "env_material", "env_medium", "sample_type")
DEFAULT_ENVIRONMENT = "unspecified"
# Rarefaction draws from one fixed seed: the same table gives the same subsample on every run and machine.
RAREFY_SEED = 0
# A label that is a sequence, not an id: long, and nearly all A, C, G, T (a stray letter is then a bad base, not an
# id); QIIME 2's MD5 ids and names such as ASV_12 are neither.
_MIN_SEQUENCE = 20
_ACGT = re.compile(r"[ACGTU]", re.IGNORECASE)
_FIX_COUNTS = "counts must be whole numbers >= 0 (a table of reads, not of relative abundances)"


@dataclass(frozen=True)
class TableOptions:
    """How a feature table becomes samples: the TrainConfig fields of the same names (config.py says what each
    means and checks it), carried to the data layer together (options_of) and by predict from its flags."""

    sequences: str | None = None
    metadata: str | None = None
    min_count: int = 0
    rarefy: int | None = None

    def given(self) -> list[str]:
        """The flags of the options set (they only apply to a feature table)."""
        names = {"sequences": self.sequences, "metadata": self.metadata, "rarefy": self.rarefy}
        out = [f"--{k}" for k, v in names.items() if v is not None]
        return out + (["--min-count"] if self.min_count else [])


# No feature-table options (what every other source is read with).
NO_TABLE = TableOptions()


def options_of(cfg: Any) -> TableOptions:
    """The table options of a settings object with the TrainConfig fields sequences, metadata, min_count, rarefy."""
    return TableOptions(cfg.sequences, cfg.metadata, int(cfg.min_count or 0), cfg.rarefy)


def is_feature_table(path: Path) -> bool:
    return path.is_file() and path.name.lower().removesuffix(".gz").endswith(TABLE_SUFFIXES)


@dataclass
class _Counts:
    """A count table read from a file, samples x features, before any check of its values."""

    path: Path
    samples: list[str]
    features: list[str]
    matrix: sparse.csr_matrix  # float64 (samples, features)
    cell: Callable[[int, int], str]  # (sample, feature) -> where the value is in the file, for messages


# ---------------------------------------------------------------- reading the table


def _read_biom(path: Path) -> _Counts:
    try:
        import biom
    except ImportError as exc:  # a declared dependency; only a broken install lacks it
        raise InputError(f"{path}: reading BIOM needs the biom-format package ({exc})") from None
    try:
        table = biom.load_table(str(path))
    except Exception as exc:  # biom raises many types (TableException, KeyError, OSError, JSON errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"{path}: cannot read it as a BIOM table ({first}); export it again (qiime tools export) or convert it "
            "with `biom convert`"
        ) from None
    samples = [str(s) for s in table.ids(axis="sample")]
    features = [str(f) for f in table.ids(axis="observation")]
    matrix = sparse.csr_matrix(table.matrix_data.T, dtype=np.float64)  # BIOM stores features x samples
    return _Counts(path, samples, features, matrix, lambda s, f: f"feature {features[f]!r} in sample {samples[s]!r}")


def _open_text(path: Path) -> io.TextIOWrapper:
    raw = open_regular(path)
    binary = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")


def _rows(path: Path) -> tuple[list[list[str]], int]:
    """The rows of a delimited file after its leading '# ...' comment lines (QIIME 2's `# Constructed from biom
    file`), and the 1-based line number of the first row kept."""
    with _open_text(path) as fh:
        lines = fh.read().splitlines()
    skip = 0
    while skip < len(lines) and (lines[skip].startswith("# ") or lines[skip].strip() in ("", "#")):
        skip += 1
    body = lines[skip:]
    if not body:
        raise DatasetError(f"{path}: no table in it (an empty file or only comment lines)")
    delimiter = "\t" if "\t" in body[0] else ","
    return [[c.strip() for c in row] for row in csv.reader(body, delimiter=delimiter)], skip + 1


def _is_sequence(label: str) -> bool:
    return len(label) >= _MIN_SEQUENCE and len(_ACGT.findall(label)) >= 0.9 * len(label)


def _features_in_rows(path: Path, corner: str, columns: list[str], rows: list[str], fasta_ids: set[str]) -> bool:
    """Whether a delimited table holds one feature per row (QIIME 2) or one sample per row (DADA2's seqtab)."""
    name = corner.lstrip("#").strip().lower()
    if name in _FEATURE_HEADERS:
        return True
    if name in _SAMPLE_HEADERS:
        return False
    for in_rows, labels in ((False, columns), (True, rows)):  # sequences as labels mark the feature axis
        if labels and sum(map(_is_sequence, labels)) >= 0.5 * len(labels):
            return in_rows
    for in_rows, labels in ((True, rows), (False, columns)):  # ids the FASTA holds mark it too
        if labels and fasta_ids and sum(x in fasta_ids for x in labels) >= 0.5 * len(labels):
            return in_rows
    raise DatasetError(
        f"{path}: cannot tell whether its rows or its columns are the features; name the first header cell "
        "'#OTU ID' (one feature per row, as QIIME 2 exports) or 'sample-id' (one sample per row, as DADA2's seqtab)"
    )


def _read_delimited(path: Path, fasta_ids: set[str]) -> _Counts:
    rows, first_line = _rows(path)
    header, body = rows[0], [r for r in rows[1:] if any(r)]
    if not body:
        raise DatasetError(f"{path}: a header but no rows of counts")
    if len(header) == len(body[0]) - 1:  # R's write.table leaves the row names' header cell out
        header = ["", *header]
    for k, row in enumerate(body):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: line {first_line + 1 + k} has {len(row)} cells, the header {len(header)}; every row needs "
                "its label and one count per column"
            )
    columns, labels = header[1:], [r[0] for r in body]
    try:  # numpy parses a large table many times faster; pandas only to find the cell that is not a number
        values = np.array([r[1:] for r in body], dtype=np.float64)
    except ValueError:
        values = pd.DataFrame([r[1:] for r in body]).apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = np.argwhere(np.isnan(values))
    if len(bad):
        r, c = map(int, bad[0])
        raise DatasetError(
            f"{path}: line {first_line + 1 + r}, column {columns[c]!r}: {body[r][c + 1]!r} is not a count; "
            + _FIX_COUNTS
        )
    in_rows = _features_in_rows(path, header[0], columns, labels, fasta_ids)

    def cell(s: int, f: int) -> str:
        r, c = (f, s) if in_rows else (s, f)
        return f"line {first_line + 1 + r}, column {columns[c]!r}"

    samples, features = (columns, labels) if in_rows else (labels, columns)
    matrix = sparse.csr_matrix(values.T if in_rows else values)
    return _Counts(path, samples, features, matrix, cell)


# ---------------------------------------------------------------- checks


def _check_unique(ids: Sequence[str], what: str, where: str, fix: str) -> None:
    seen: dict[str, int] = {}
    for k, x in enumerate(ids):
        if not x:
            raise DatasetError(f"{where}: {what} number {k + 1} has an empty id; {fix}")
        if x in seen:
            raise DatasetError(f"{where}: {what} {x!r} appears twice (number {seen[x] + 1} and {k + 1}); {fix}")
        seen[x] = k


def _check_counts(table: _Counts) -> None:
    coo = table.matrix.tocoo()
    data = coo.data
    wrong = ~np.isfinite(data) | (data < 0) | (data != np.round(data))
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        value = data[k]
        what = "negative" if value < 0 else "not a whole number"
        shown = int(value) if math.isfinite(value) and value == round(value) else value
        raise DatasetError(
            f"{table.path}: {table.cell(int(coo.row[k]), int(coo.col[k]))}: the count {shown} is {what}; {_FIX_COUNTS}"
        )


# ---------------------------------------------------------------- sequences


def read_fasta_ids(path: Path) -> dict[str, str]:
    """id -> sequence of a FASTA file (the id is the header's first word, as QIIME 2's dna-sequences.fasta)."""
    out: dict[str, str] = {}
    current: str | None = None
    pieces: list[str] = []

    def close(line: int) -> None:
        if current is None:
            return
        if current in out:
            raise DatasetError(
                f"{path}: the id {current!r} appears twice (again before line {line}); ids must be unique"
            )
        out[current] = "".join(pieces).replace(" ", "")

    n = 0
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                close(n)
                current, pieces = (line[1:].split() or [""])[0], []
                if not current:
                    raise DatasetError(f"{path}: line {n}: a '>' header without an id")
            elif current is None:
                raise DatasetError(f"{path}: not FASTA (a sequence on line {n} before the first '>' header)")
            else:
                pieces.append(line)
        close(n + 1)
    return out


def _check_dna(sequence: str, where: str) -> None:
    try:
        tokenizer.encode(sequence)
    except tokenizer.InvalidSequenceError as exc:
        detail = str(exc).removeprefix("a sequence ")
        raise DatasetError(f"{where}: the sequence {detail}") from None


def _sequences(table: _Counts, fasta: dict[str, str] | None, fasta_path: str | None) -> list[str]:
    """The sequence of every feature: from the FASTA, else the feature's label when it is a sequence (DADA2)."""
    if fasta is not None:
        missing = [f for f in table.features if f not in fasta]
        if missing:
            raise DatasetError(
                f"{table.path}: {len(missing)} of its {len(table.features)} feature(s) have no sequence in "
                f"{fasta_path}, e.g. {', '.join(map(repr, missing[:3]))}; give the FASTA exported with this table "
                "(qiime tools export on its rep-seqs) or filter the table to the features it holds"
            )
        unused = len(fasta) - len(table.features)
        if unused > 0:
            log.info("%s: %d sequence(s) of features not in %s, ignored", fasta_path, unused, table.path.name)
        out = [fasta[f] for f in table.features]
        for f, seq in zip(table.features, out):
            if not seq:
                raise DatasetError(f"{fasta_path}: feature {f!r} has an empty sequence; give its sequence")
            _check_dna(seq, f"{fasta_path}: feature {f!r}")
        return [s.upper() for s in out]
    for k, f in enumerate(table.features):
        if not _is_sequence(f):
            raise DatasetError(
                f"{table.path}: feature {f!r} (number {k + 1}) is an id, not a DNA sequence; give the features' "
                "sequences with --sequences dna-sequences.fasta (QIIME 2: qiime tools export on the rep-seqs .qza)"
            )
        _check_dna(f, f"{table.path}: feature number {k + 1}")
    return [f.upper() for f in table.features]


# ---------------------------------------------------------------- metadata


def _metadata_rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and their line numbers of a QIIME 2-style metadata file ('#q2:' and '#' rows skipped)."""
    with _open_text(path) as fh:
        lines = fh.read().splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    # Comment lines before the header start with '#' but are not an id header such as '#SampleID'.
    while numbered and numbered[0][1].startswith("#") and "\t" not in numbered[0][1] and "," not in numbered[0][1]:
        numbered.pop(0)
    if not numbered:
        raise DatasetError(
            f"--metadata {path}: empty; it needs a header (sample-id, pH or your --target, ...) and one row per sample"
        )
    delimiter = "\t" if "\t" in numbered[0][1] else ","
    parsed = [[c.strip() for c in row] for row in csv.reader([line for _, line in numbered], delimiter=delimiter)]
    header = parsed[0]
    keep = [k for k in range(1, len(parsed)) if not (parsed[k] and parsed[k][0].startswith("#"))]
    return header, [parsed[k] for k in keep], [numbered[k][0] for k in keep]


def read_metadata(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, int]]:
    """Sample metadata indexed by sample id (strings; the first column must be a QIIME 2 id column), and the line
    of each sample id in the file (for messages)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"--metadata {path}: no such file")
    header, rows, lines = _metadata_rows(path)
    if header[0].lstrip("#").strip().lower().replace("_", "").replace(" ", "").replace("-", "") not in {
        "id",
        "sampleid",
    }:
        raise DatasetError(
            f"--metadata {path}: its first column is {header[0]!r}; name it sample-id (or #SampleID, id) and put "
            "the sample ids in it, as QIIME 2 metadata does"
        )
    width = len(header)
    rows = [r + [""] * (width - len(r)) if len(r) < width else r[:width] for r in rows]
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    ids = frame.iloc[:, 0].tolist()
    for k, x in enumerate(ids):
        if not x:
            raise DatasetError(f"--metadata {path}: line {lines[k]} has no sample id in its first column")
    seen: dict[str, int] = {}
    for k, x in enumerate(ids):
        if x in seen:
            raise DatasetError(
                f"--metadata {path}: sample id {x!r} is on line {seen[x]} and line {lines[k]}; sample ids must be "
                "unique"
            )
        seen[x] = lines[k]
    frame.index = pd.Index(ids, name="sample_id")
    return frame.iloc[:, 1:], seen


def _column(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    lower = {str(c).lower(): str(c) for c in frame.columns}
    return next((lower[n] for n in names if n in lower), None)


def _target_values(
    meta: pd.DataFrame, lines: dict[str, int], path: str, labelled: bool, target: str
) -> pd.Series | None:
    """The target column's numbers (the exact name first, else the one that differs only in case); its range is
    checked with every other source's rows (sources.clean_samples)."""
    column = target if target in meta.columns else _column(meta, (target.lower(),))
    if column is None:
        if labelled:
            flag = "" if target == DEFAULT_TARGET else " (--target)"
            raise DatasetError(
                f"--metadata {path}: no {target} column{flag} (found: {', '.join(map(str, meta.columns))}); add one "
                f"named {target} holding each sample's {target} (leave a cell empty where it is unknown)"
            )
        return None
    raw = meta[column].replace({"": None, "NA": None, "NaN": None, "nan": None, "missing": None})
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        sid = str(meta.index[np.flatnonzero(bad.to_numpy())[0]])
        raise DatasetError(
            f"--metadata {path}: line {lines[sid]} (sample {sid!r}), column {column!r}: "
            f"{meta.loc[sid, column]!r} is not a number; give a number, or leave the cell empty where it is unknown"
        )
    return values


# ---------------------------------------------------------------- filters


def _merge_identical(table: _Counts, sequences: list[str]) -> tuple[sparse.csr_matrix, list[str]]:
    """Counts per distinct sequence (features with the same sequence are one organism to the model)."""
    codes, unique = pd.factorize(pd.Series(sequences), sort=False)
    if len(unique) == len(sequences):
        return table.matrix, list(unique)
    log.info(
        "%s: %d feature(s) share their sequence with another; their counts were added up (%d distinct sequences)",
        table.path.name,
        len(sequences) - len(unique),
        len(unique),
    )
    merge = sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), len(unique)))
    return sparse.csr_matrix(table.matrix @ merge), list(unique)


def _min_count(matrix: sparse.csr_matrix, min_count: int, where: str) -> sparse.csr_matrix:
    totals = np.asarray(matrix.sum(axis=0)).ravel()
    absent = int((totals == 0).sum())
    if absent:
        log.info("%s: %d feature(s) have no count in any sample", where, absent)
    if min_count <= 1:
        return matrix
    low = (totals < min_count) & (totals > 0)
    log.info(
        "%s: dropped %d of %d feature(s) with a total count below %d (--min-count), %d reads in all",
        where,
        int(low.sum()),
        int((totals > 0).sum()),
        min_count,
        int(totals[low].sum()),
    )
    keep = sparse.diags((~low).astype(np.float64))
    out = sparse.csr_matrix(matrix @ keep)
    out.eliminate_zeros()
    return out


def rarefy(counts: np.ndarray, depth: int, rng: np.random.Generator) -> np.ndarray:
    """A draw of exactly ``depth`` reads without replacement from one sample's counts (int64)."""
    return rng.multivariate_hypergeometric(counts.astype(np.int64), depth)


def _rarefy(matrix: sparse.csr_matrix, samples: list[str], depth: int, where: str) -> tuple[sparse.csr_matrix, list]:
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    shallow = totals < depth
    if shallow.any():
        log.warning(
            "%s: dropped %d sample(s) with fewer than %d reads (--rarefy), e.g. %s",
            where,
            int(shallow.sum()),
            depth,
            ", ".join(np.asarray(samples)[shallow][:5]),
        )
    rng = np.random.default_rng(RAREFY_SEED)
    rows = []
    for s in np.flatnonzero(~shallow):
        row = matrix.getrow(int(s))
        drawn = rarefy(row.data, depth, rng)
        rows.append(sparse.csr_matrix((drawn.astype(np.float64), row.indices, [0, len(drawn)]), shape=row.shape))
    log.info("%s: rarefied %d sample(s) to %d reads each (seed %d)", where, len(rows), depth, RAREFY_SEED)
    out = sparse.vstack(rows, format="csr") if rows else sparse.csr_matrix((0, matrix.shape[1]))
    out.eliminate_zeros()
    return out, [samples[int(s)] for s in np.flatnonzero(~shallow)]


# ---------------------------------------------------------------- samples


def _labels(table: _Counts, options: TableOptions, labelled: bool, target: str) -> pd.DataFrame:
    """study_name, environment and the target of every sample of the table (from the metadata; checked)."""
    frame = pd.DataFrame(index=pd.Index(table.samples, name="sample_id"))
    study, env = table.path.name.split(".")[0], DEFAULT_ENVIRONMENT
    if options.metadata is None:
        if labelled:
            raise DatasetError(
                f"{table.path}: a feature table has no {target}; give the sample metadata with --metadata "
                f"sample-metadata.tsv (first column sample-id, a {target} column)"
            )
        return frame.assign(study_name=study, environment=env, **{target: np.nan})
    meta, lines = read_metadata(options.metadata)
    missing = [s for s in table.samples if s not in meta.index]
    if missing and labelled:
        raise DatasetError(
            f"--metadata {options.metadata}: {len(missing)} sample id(s) of {table.path} are not in it, e.g. "
            f"{', '.join(map(repr, missing[:3]))}; add a row for each (first column sample-id) or filter the table "
            "to the samples it describes (qiime feature-table filter-samples)"
        )
    if missing:
        log.info("%d sample(s) of %s have no row in %s (no %s)", len(missing), table.path, options.metadata, target)
    extra = len(set(meta.index) - set(table.samples))
    if extra:
        log.info("%s: %d sample(s) not in %s, ignored", options.metadata, extra, table.path.name)
    known = meta.reindex(table.samples)
    values = _target_values(meta, lines, options.metadata, labelled, target)
    frame[target] = values.reindex(table.samples).to_numpy(np.float64) if values is not None else np.nan
    for name, candidates, default in (
        ("study_name", STUDY_COLUMNS, study),
        ("environment", ENVIRONMENT_COLUMNS, env),
    ):
        column = _column(meta, candidates)
        values = known[column].fillna("") if column else pd.Series("", index=known.index)
        frame[name] = values.where(values.str.strip() != "", default).to_numpy()
        if column is None:
            log.info("%s: no %s column (%s); every sample gets %r", options.metadata, name, candidates[0], default)
    return frame


def _sample_rows(matrix: sparse.csr_matrix, sequences: list[str]) -> tuple[list[list[str]], list[list[int]]]:
    """Each sample's distinct sequences, most abundant first, and their counts."""
    reads, counts = [], []
    for s in range(matrix.shape[0]):
        row = matrix.getrow(s)
        order = np.lexsort((row.indices, -row.data))
        reads.append([sequences[j] for j in row.indices[order]])
        counts.append([int(c) for c in row.data[order]])
    return reads, counts


def read_feature_table(
    path: str | os.PathLike, options: TableOptions = NO_TABLE, *, labelled: bool = True, target: str = DEFAULT_TARGET
) -> pd.DataFrame:
    """The sample table of a feature table: sample_id, study_name, environment, the target (the metadata's column
    of that name: pH unless a --target names another), sequences (distinct, most abundant first) and counts (reads
    of each). labelled=False (samples to predict): the metadata is optional."""
    path = Path(path).expanduser()
    fasta = None
    if options.sequences is not None:
        fasta_path = Path(options.sequences).expanduser()
        if not fasta_path.exists():
            raise DatasetError(f"--sequences {options.sequences}: no such file")
        fasta = read_fasta_ids(fasta_path)
    if path.name.lower().removesuffix(".gz").endswith(".biom"):
        table = _read_biom(path)
    else:
        table = _read_delimited(path, set(fasta or ()))
    _check_unique(table.samples, "sample", str(path), "sample ids must be unique (merge or rename the samples)")
    _check_unique(table.features, "feature", str(path), "feature ids must be unique (merge or rename the features)")
    _check_counts(table)
    table.matrix.eliminate_zeros()  # a BIOM file may store zeros; a sample holds only the sequences it has
    sequences = _sequences(table, fasta, options.sequences)
    labels = _labels(table, options, labelled, target)
    matrix, distinct = _merge_identical(table, sequences)
    matrix = _min_count(matrix, options.min_count, path.name)
    samples = list(table.samples)
    if options.rarefy is not None:
        matrix, samples = _rarefy(matrix, samples, options.rarefy, path.name)
    reads, counts = _sample_rows(matrix, distinct)
    out = labels.loc[samples].reset_index()
    out["sequences"] = reads
    out["counts"] = counts
    log.info(
        "%s: %d samples, %d distinct sequences, %d reads",
        path.name,
        len(out),
        len(distinct),
        int(sum(map(sum, counts))),
    )
    return out[["sample_id", "study_name", "environment", target, "sequences", "counts"]]
