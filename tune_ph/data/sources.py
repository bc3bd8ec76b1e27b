"""Dataset sources (hub, local copies, demo) -> validated sample table -> published split -> token arrays."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from hyena_dna import tokenizer
from tune_ph.config import DEFAULT_DATASET, TrainConfig
from tune_ph.data import fasta, feature_table, tokens
from tune_ph.data.demo import make_demo
from tune_ph.data.feature_table import TableOptions
from tune_ph.data.split import split_samples
from tune_ph.data.tokens import TokenizedDataset
from tune_ph.errors import BadRowError, ConfigError, DatasetError, InputError
from tune_ph.metrics import DEFAULT_TARGET, PH_RANGE, target_range

log = logging.getLogger(__name__)

# The columns of the published dataset, as the FASTA builder writes them.
SCHEMA = tuple(fasta.PARQUET_SCHEMA.names)
REQUIRED = ("sample_id", "study_name", "pH", "sequences", "environment")
# The column every stage after cleaning reads the target from (a --target's values are copied into it).
LABEL = "pH"
# What an unlabelled table (samples to predict) needs; pH, study_name and environment may be absent.
UNLABELLED_REQUIRED = ("sample_id", "sequences")
_TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")
_SKIP_HINT = "Fix the data, or pass skip_bad_rows=True (CLI: --skip-bad-rows) to drop such rows."


__all__ = ["Target", "load_for", "load_samples", "prepare", "prepare_for"]


# ---------------------------------------------------------------- sources


def _local_alternatives() -> str:
    return (
        "Local alternatives: a folder laid out like the hub repository (data/*.parquet), a folder written by "
        "datasets' save_to_disk, .parquet/.jsonl files with the same columns, your own FASTA files via "
        "`python -m tune_ph data build --fasta-dir DIR --metadata CSV --output-dir DIR`, a feature (ASV) table "
        "(.biom or a QIIME 2 / DADA2 .tsv/.csv of counts) with --metadata TSV, or `demo` for the synthetic set."
    )


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else path-like must exist on disk.
    return (
        source.startswith(("/", "./", "../", "~", "."))
        or "\\" in source
        or source.count("/") > 1
        or source.lower().endswith(_TABLE_SUFFIXES + feature_table.TABLE_SUFFIXES + (".arrow",))
    )


def _frame_from_hf(obj) -> pd.DataFrame:
    """A pandas frame from a datasets Dataset or DatasetDict (all splits: we split ourselves)."""
    parts = list(obj.values()) if hasattr(obj, "keys") else [obj]
    frames = [p.to_pandas() for p in parts]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _read_table_files(files: Sequence[Path], required: Sequence[str] = REQUIRED) -> pd.DataFrame:
    frames = []
    for f in files:
        name = f.name.lower()
        try:
            if name.endswith(".parquet"):
                frames.append(pd.read_parquet(f))
            else:
                # dtype=False: values keep their JSON types (pandas would read sample_id "0012" as 12, pH true as 1.0).
                lines = name.endswith(".jsonl") or _is_json_lines(f)
                frames.append(pd.read_json(f, lines=lines, dtype=False))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{f}: cannot read it as {f.suffix.lstrip('.')} ({exc})") from exc
        _check_columns(frames[-1], str(f), required)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _is_json_lines(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1).strip()
    return head != b"["


def _load_local(path: Path, required: Sequence[str] = REQUIRED) -> pd.DataFrame:
    if path.is_file():
        if not path.name.lower().endswith(_TABLE_SUFFIXES):
            raise DatasetError(
                f"{path}: unsupported file type; use .parquet or .jsonl (or a dataset folder), or a feature table "
                f"({', '.join(feature_table.TABLE_SUFFIXES)})"
            )
        return _read_table_files([path], required)
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets  # slow to import; only needed for save_to_disk folders

        return _check_columns(_frame_from_hf(datasets.load_from_disk(str(path))), str(path), required)
    files = _visible(path, "*.parquet") or _visible(path, "*.jsonl")
    if not files:
        raise DatasetError(
            f"{path}: no dataset found in this folder (expected parquet shards such as "
            "data/train-00000-of-00001.parquet, a save_to_disk folder, or .jsonl files)"
        )
    log.info("reading %d file(s) from %s", len(files), path)
    return _read_table_files(files, required)


def _visible(folder: Path, pattern: str) -> list[Path]:
    """Files below folder matching pattern, skipping hidden ones (.cache/, .git/) below it; the folder's own path
    may hold `..`."""
    return sorted(p for p in folder.rglob(pattern) if not any(x.startswith(".") for x in p.relative_to(folder).parts))


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (a quick TCP check), or None; saves datasets' ~25 s of retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None  # behind a proxy a direct connection says nothing
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc})"
    return None


def _hub_error(source: str, reason: str) -> DatasetError:
    offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "").strip() not in ("", "0")]
    state = f"{' and '.join(offline)} is set" if offline else "HF_DATASETS_OFFLINE is not set"
    return DatasetError(
        f"cannot load the hub dataset {source!r}: {reason}\n"
        f"({state}. With HF_DATASETS_OFFLINE=1 only a dataset already in the local Hugging Face cache loads; "
        "without network access the hub cannot be reached.)\n" + _local_alternatives()
    )


def _load_hub(source: str, required: Sequence[str] = REQUIRED) -> pd.DataFrame:
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:  # the library will go to the network: fail fast if it can't
        reason = _hub_unreachable()
        if reason is not None:
            raise _hub_error(source, reason)
    try:
        return _check_columns(_frame_from_hf(datasets.load_dataset(source)), f"hub dataset {source}", required)
    except DatasetError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, HfHubHTTPError...)
        raise _hub_error(source, f"{type(exc).__name__}: {exc}") from exc


def _check_columns(df: pd.DataFrame, where: str, required: Sequence[str] = REQUIRED) -> pd.DataFrame:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{where}: missing column(s) {', '.join(missing)}; a dataset needs {', '.join(required)} "
            f"(found: {', '.join(map(str, df.columns))})"
        )
    return df


def _read_source(
    source: str,
    required: Sequence[str] = REQUIRED,
    table: TableOptions = feature_table.NO_TABLE,
    *,
    target: str = LABEL,
    labelled: bool = True,
) -> pd.DataFrame:
    path = Path(source).expanduser()
    if source != "demo" and feature_table.is_feature_table(path):  # its target column is the metadata's
        return feature_table.read_feature_table(path, table, labelled=labelled, target=target)
    if table.given():
        flags = table.given()
        raise InputError(
            f"{' and '.join(flags)} {'go' if len(flags) > 1 else 'goes'} with a feature table (.biom, or a QIIME 2 / "
            f"DADA2 .tsv/.csv of counts); --dataset {source} is not one: leave {'them' if len(flags) > 1 else 'it'} out"
        )
    if source == "demo":
        return make_demo()
    if path.exists():
        return _load_local(path, required)
    if _looks_like_path(source):
        raise DatasetError(f"no such file or folder: {source}. " + _local_alternatives())
    return _load_hub(source, required)


# ---------------------------------------------------------------- validation


def _as_reads(value) -> list[str] | None:
    if value is None or isinstance(value, (str, bytes, float)):
        return None
    try:
        return [str(r) if r is not None else "" for r in value]
    except TypeError:
        return None


def _label_problem(value, target: Target, labelled: bool) -> str | None:
    """What is wrong with a row's target value (a number in the target's range), or None."""
    if isinstance(value, (bool, np.bool_)):  # float(True) is 1.0: a JSON true must not become pH 1
        return f"is true/false ({value!r}), not a number"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return f"is not a number ({value!r})"
    if math.isnan(value):  # unlabelled: a missing value is NaN (labelled rows without one were dropped)
        return "is missing" if labelled else None
    low, high = target.range
    if not math.isfinite(value):
        return f"is {value}, not a finite number"
    if not low <= value <= high:
        given = target.name != DEFAULT_TARGET or (low, high) != PH_RANGE
        return f"is {value}, outside {low:g}-{high:g}" + (" (--target-range)" if given else "")
    return None


def _row_problem(
    sid, study, env, ph, reads, labelled: bool = True, target: Target | None = None
) -> tuple[str, str] | None:
    """(field, problem) of the first thing wrong with a row, or None (unlabelled: only sample_id and reads)."""
    target = target or Target()
    for field, value in (("sample_id", sid), ("study_name", study), ("environment", env))[: 3 if labelled else 1]:
        if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
            return field, "is missing or empty"
    problem = _label_problem(ph, target, labelled)
    if problem is not None:
        return target.name, problem
    if reads is None:
        return "sequences", "is missing or not a list of DNA strings"
    if reads:
        joined = "".join(reads)
        try:
            tokenizer.encode(joined)  # one vectorised check; per read only to name the culprit
        except tokenizer.InvalidSequenceError:
            for k, r in enumerate(reads):
                try:
                    tokenizer.encode(r, name=f"read {k}")
                except tokenizer.InvalidSequenceError as exc:
                    return "sequences", str(exc)
    return None


@dataclass(frozen=True)
class Target:
    """The column a model predicts and the values it may take (TrainConfig.target, target_range)."""

    name: str = DEFAULT_TARGET
    range: tuple[float, float] = PH_RANGE

    @classmethod
    def of(cls, cfg: TrainConfig) -> Target:
        return cls(cfg.target, target_range(cfg.target, cfg.target_range))


def required_columns(target: Target, labelled: bool = True) -> tuple[str, ...]:
    """The columns a table needs: the target's column in place of pH (unlabelled: sample_id and sequences)."""
    return tuple(target.name if c == LABEL else c for c in REQUIRED) if labelled else UNLABELLED_REQUIRED


def _with_label(df: pd.DataFrame, target: Target, labelled: bool) -> pd.DataFrame:
    """The table with the target's values in the label column, pH (what every later stage reads); the target's own
    column is kept, so a cleaned table cleans again to itself. Unlabelled, without the target: no labels (NaN)."""
    if target.name == LABEL:
        return df
    df = df.copy()
    df[LABEL] = df[target.name] if target.name in df.columns else np.nan
    return df


def clean_samples(
    df: pd.DataFrame,
    *,
    skip_bad_rows: bool = False,
    where: str = "dataset",
    labelled: bool = True,
    target: Target | None = None,
) -> pd.DataFrame:
    """Validate and normalise a raw sample table (drop null targets and empty reads; bad rows → error or skip).

    target: the column to predict and its range (default pH, 0-14); its values land in the pH column, which every
    later stage reads. labelled=False (samples to predict): only sample_id and sequences are needed; a missing
    target value stays NaN and a missing study_name or environment becomes "".
    """
    target = target or Target()
    _check_columns(df, where, required_columns(target, labelled))
    df = _with_label(df.reset_index(drop=True), target, labelled)
    df = df if labelled else _without_labels(df)
    source_row = np.arange(len(df))  # row numbers in messages are the source's (0-based), not after drops
    null_ph = pd.to_numeric(df["pH"], errors="coerce").isna() & df["pH"].isna()
    if null_ph.any() and labelled:
        log.info("%s: dropped %d sample(s) with no %s", where, int(null_ph.sum()), target.name)
        df = df.loc[~null_ph].reset_index(drop=True)
        source_row = source_row[~null_ph.to_numpy()]

    reads_col: list[list[str] | None] = [_as_reads(v) for v in df["sequences"]]
    counts_col = _as_counts(df, where) if "counts" in df.columns else None
    bad: list[tuple[int, str, str, str]] = []
    # Ids are compared as they are finally stored (stripped): "S1" and "S1 " are one sample, and keeping both
    # would put the same id in two splits.
    seen: dict[str, int] = {}
    empty_reads = 0
    keep = np.ones(len(df), dtype=bool)
    for i, (sid, study, env, ph) in enumerate(
        zip(df["sample_id"].tolist(), df["study_name"].tolist(), df["environment"].tolist(), df["pH"].tolist())
    ):
        reads = reads_col[i]
        if reads is not None:
            kept_read = [bool(r and r.strip()) for r in reads]
            empty_reads += len(reads) - sum(kept_read)
            reads_col[i] = reads = [r.strip() for r, k in zip(reads, kept_read) if k]
            if counts_col is not None:
                counts_col[i] = _aligned_counts(counts_col[i], kept_read, where, sid)
        problem = _row_problem(sid, study, env, ph, reads, labelled, target)
        key = str(sid).strip()
        if problem is None and key in seen:
            problem = ("sample_id", f"is a duplicate of row {seen[key]} (ids are compared without surrounding spaces)")
        if problem is not None:
            bad.append((int(source_row[i]), str(sid), *problem))
            keep[i] = False
        else:
            seen[key] = int(source_row[i])
    if bad and not skip_bad_rows:
        i, sid, field, problem = bad[0]
        more = f" ({len(bad) - 1} more bad row(s))" if len(bad) > 1 else ""
        raise BadRowError(f"{where}: sample_id {sid!r} (row {i}): field {field!r} {problem}{more}. {_SKIP_HINT}")
    if bad:
        examples = "; ".join(f"{sid} ({field})" for _, sid, field, _ in bad[:5])
        log.warning("%s: skipped %d bad row(s), e.g. %s", where, len(bad), examples)
    if empty_reads:
        log.info("%s: dropped %d empty read(s)", where, empty_reads)

    out = df.loc[keep].copy()
    out["sequences"] = [reads_col[i] for i in np.flatnonzero(keep)]
    if counts_col is not None:
        out["counts"] = [counts_col[i] for i in np.flatnonzero(keep)]
    no_reads = out["sequences"].map(len) == 0
    if no_reads.any():
        log.warning(
            "%s: dropped %d sample(s) with no reads, e.g. %s",
            where,
            int(no_reads.sum()),
            ", ".join(map(str, out.loc[no_reads, "sample_id"].head(5))),
        )
        out = out.loc[~no_reads]
    for col in ("sample_id", "study_name", "environment"):
        out[col] = out[col].astype(str).str.strip()
    out["pH"] = out["pH"].astype(float)
    if target.name != LABEL:
        out[target.name] = out["pH"]
    # A fixed row order makes the token arrays (and their cache key) independent of shard order.
    return out.sort_values("sample_id", kind="stable").reset_index(drop=True)


def _as_counts(df: pd.DataFrame, where: str) -> list[list[int]]:
    """A table's per-read counts (a feature table's: how many reads each distinct sequence stands for)."""
    out = []
    for sid, value in zip(df["sample_id"].tolist(), df["counts"].tolist()):
        counts = np.asarray(value if value is not None else [], dtype=np.float64).ravel()
        if not np.all(np.isfinite(counts) & (counts >= 1) & (counts == np.round(counts))):
            raise BadRowError(
                f"{where}: sample_id {sid!r}: field 'counts' holds a value that is not a whole number > 0"
            )
        out.append(counts.astype(np.int64).tolist())
    return out


def _aligned_counts(counts: list[int], kept_read: list[bool], where: str, sid) -> list[int]:
    if len(counts) != len(kept_read):
        raise BadRowError(
            f"{where}: sample_id {sid!r}: {len(counts)} counts for {len(kept_read)} sequences; give one count per "
            "sequence"
        )
    return [c for c, k in zip(counts, kept_read) if k]


def _without_labels(df: pd.DataFrame) -> pd.DataFrame:
    """An unlabelled table with every REQUIRED column: absent or null labels become "" (pH: NaN)."""
    df = df.copy()
    for col in ("study_name", "environment"):
        df[col] = df[col].fillna("") if col in df.columns else ""
    df["pH"] = df["pH"].where(df["pH"].notna(), np.nan) if "pH" in df.columns else np.nan
    return df


def load_samples(
    source: str = DEFAULT_DATASET,
    *,
    skip_bad_rows: bool = False,
    labelled: bool = True,
    target: Target | None = None,
    table: TableOptions = feature_table.NO_TABLE,
) -> pd.DataFrame:
    """Samples of a dataset source ("demo", hub id, local folder or file, feature table), validated and cleaned.

    labelled=False: samples to predict; rows without a target value are kept (see clean_samples). target: the
    column to predict (default pH), whose values the returned table holds in its pH column. table: a feature
    table's sequences, metadata and filters (a feature table's samples carry a `counts` column: reads per sequence).
    """
    target = target or Target()
    raw = _read_source(str(source), required_columns(target, labelled), table, target=target.name, labelled=labelled)
    df = clean_samples(raw, skip_bad_rows=skip_bad_rows, where=str(source), labelled=labelled, target=target)
    log.info("%s: %d samples", source, len(df))
    return df


def load_for(cfg: TrainConfig, *, labelled: bool = True) -> pd.DataFrame:
    """The samples of a config's dataset, read with its target, its table options and skip_bad_rows."""
    return load_samples(
        cfg.dataset,
        skip_bad_rows=cfg.skip_bad_rows,
        labelled=labelled,
        target=Target.of(cfg),
        table=feature_table.options_of(cfg),
    )


def prepare(
    source: str = DEFAULT_DATASET,
    *,
    max_length: int | None = None,
    model_max_length: int | None = None,
    max_sets: int | None = None,
    seed: int = 42,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    cache_dir: str | os.PathLike | None = None,
    skip_bad_rows: bool = False,
    split_by: str = "none",
    target: Target | None = None,
    table: TableOptions = feature_table.NO_TABLE,
) -> TokenizedDataset:
    """Load, split and tokenize a dataset source (token arrays are cached on disk by content).

    max_length None: the model's (``model_max_length``), capped by the longest sample, so a long-context model
    sees whole samples without tokens of padding beyond them.
    """
    if max_length is None and model_max_length is None:
        raise ValueError("give max_length or model_max_length")
    df = load_samples(source, skip_bad_rows=skip_bad_rows, target=target, table=table)
    if max_length is None:
        max_length = tokens.effective_length(df, model_max_length)
    split = split_samples(df, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction, by=split_by)
    ds = tokens.build(df, split, max_length=max_length, max_sets=max_sets, cache_dir=cache_dir)
    log.info("%s", ds)
    return ds


def prepare_for(cfg: TrainConfig, model_max_length: int | None = None) -> TokenizedDataset:
    """The tokenized dataset a training config reads.

    cfg.max_length None: the model's maximum (``model_max_length``: a built backbone's, or the search spec's),
    capped by the longest sample; the dataset's ``max_length`` says what was chosen (tokens.resolved_config).
    """
    if cfg.val_fraction == 0:  # the baseline may do without; training picks its best epoch on val
        raise ConfigError(
            "val_fraction",
            "val_fraction 0 leaves no validation samples, and training picks its best "
            "epoch on them; use --val-fraction above 0 (default 0.1)",
        )
    return prepare(
        cfg.dataset,
        max_length=cfg.max_length,
        model_max_length=model_max_length,
        max_sets=cfg.max_sets,
        seed=cfg.split_seed,
        test_fraction=cfg.test_fraction,
        val_fraction=cfg.val_fraction,
        cache_dir=cfg.cache_dir,
        skip_bad_rows=cfg.skip_bad_rows,
        split_by=cfg.split_by,
        target=Target.of(cfg),
        table=feature_table.options_of(cfg),
    )
