"""A taxonomy table (sequence or feature id -> taxon) read from a TSV, for naming the clusters that drive a model."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tune_ph.errors import InputError

# The first row is a header, not a feature, when its first field is one of these (QIIME 2's taxonomy.tsv starts
# "Feature ID<TAB>Taxon<TAB>Confidence"; a plain table may say "sequence<TAB>taxon").
_HEADERS = {"feature id", "feature-id", "featureid", "#otu id", "#otuid", "otu id", "id", "sequence", "sequences"}
_DNA = set("ACGTN")
# A taxonomy file is text of a few MB; a cap keeps a wrong path (a FASTQ of GBs) from filling the memory.
MAX_BYTES = 512 * 2**20


@dataclass
class Taxonomy:
    """Taxa by read sequence (upper case) and by feature id; an id is resolved to its sequence with with_sequences().

    The one interface the drivers use is taxon_of(sequence): an ASV table's loader that knows each feature's
    sequence hands its {id: sequence} to with_sequences() and nothing else changes.
    """

    by_sequence: dict[str, str] = field(default_factory=dict)
    by_id: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def taxon_of(self, sequence: str) -> str | None:
        return self.by_sequence.get(sequence.strip().upper())

    def with_sequences(self, sequences: Mapping[str, str]) -> Taxonomy:
        """This table with each feature id's taxon also keyed by that feature's sequence ({id: sequence})."""
        by_sequence = dict(self.by_sequence)
        for feature, taxon in self.by_id.items():
            if feature in sequences:
                by_sequence.setdefault(str(sequences[feature]).strip().upper(), taxon)
        return Taxonomy(by_sequence, dict(self.by_id), self.source)

    def __len__(self) -> int:
        return len(self.by_sequence) + len(self.by_id)


def from_rows(rows: Iterable[tuple[str, str]], source: str = "taxonomy") -> Taxonomy:
    """A Taxonomy of (key, taxon) pairs: a key of DNA letters is a sequence, anything else a feature id."""
    out = Taxonomy(source=source)
    for key, taxon in rows:
        key, taxon = key.strip(), taxon.strip()
        table = out.by_sequence if set(key.upper()) <= _DNA else out.by_id
        table[key.upper() if table is out.by_sequence else key] = taxon
    return out


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read a TSV of `sequence or feature id<TAB>taxon` (more columns, e.g. QIIME 2's Confidence, are ignored; a
    header row is recognised and skipped). Bad input is one InputError naming the file and row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--taxonomy {path}: no such file; give a TSV of sequence (or feature id) and taxon")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"--taxonomy {path}: {path.stat().st_size / 2**20:.0f} MiB is not a taxonomy table")
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for number, fields in enumerate(csv.reader(fh, delimiter="\t"), start=1):
                if not fields or not "".join(fields).strip():
                    continue
                if number == 1 and fields[0].strip().lower() in _HEADERS:
                    continue
                _check_row(path, number, fields, seen)
                rows.append((fields[0], fields[1]))
    except UnicodeDecodeError:
        raise InputError(f"--taxonomy {path}: not UTF-8 text; give a tab-separated text file") from None
    if not rows:
        raise InputError(f"--taxonomy {path}: no rows; give one `sequence<TAB>taxon` per line")
    return from_rows(rows, str(path))


def _check_row(path: Path, number: int, fields: list[str], seen: dict[str, int]) -> None:
    if len(fields) < 2 or not fields[1].strip():
        raise InputError(
            f"--taxonomy {path}: row {number} has no taxon (expected `sequence or feature id<TAB>taxon`, tab-separated)"
        )
    key = fields[0].strip().upper()
    if not key:
        raise InputError(f"--taxonomy {path}: row {number} has an empty sequence or feature id")
    if key in seen:
        raise InputError(f"--taxonomy {path}: row {number} repeats {fields[0].strip()[:40]!r} of row {seen[key]}")
    seen[key] = number
