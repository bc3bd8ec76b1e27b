"""Write examples/qiime2/: a tiny QIIME 2-style export (feature-table.biom, dna-sequences.fasta, sample-metadata.tsv,
taxonomy.tsv) and new samples to predict (new-samples.biom), with a learnable pH signal. Deterministic.

    python examples/make_qiime2_example.py [--out examples/qiime2]

The community: 12 genera of 16 ASVs each (V4-length amplicons, ~85 % identity within a genus); a genus prefers a
pH, and a sample's ASV counts follow each genus's Gaussian response to the sample's pH, with log-normal noise, as
the counts DADA2 reports. Feature ids are MD5 hashes of the sequences, as QIIME 2 names ASVs.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import h5py
import numpy as np
from biom import Table

GENERA = 12
ASVS_PER_GENUS = 16
LENGTH = 253  # a V4 amplicon's length after DADA2
TRAIN_SAMPLES = 60
NEW_SAMPLES = 12
ENVIRONMENTS = {"soil": (4.0, 7.5), "lake": (6.5, 9.0)}  # pH range drawn from
GENERATOR = "tune_ph examples/make_qiime2_example.py"


def _asvs(rng: np.random.Generator) -> tuple[list[str], np.ndarray, list[str]]:
    """Sequences, each ASV's genus pH optimum, and its taxonomy string."""
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    optima = np.linspace(3.5, 9.5, GENERA)[rng.permutation(GENERA)]
    sequences, asv_optimum, taxa = [], [], []
    for g in range(GENERA):
        ancestor = rng.choice(bases, LENGTH)
        for _ in range(ASVS_PER_GENUS):
            seq = ancestor.copy()
            hits = rng.random(LENGTH) < 0.15
            seq[hits] = rng.choice(bases, int(hits.sum()))
            sequences.append(seq.tobytes().decode("ascii"))
            asv_optimum.append(optima[g] + rng.normal(0, 0.3))
            taxa.append(f"d__Bacteria; p__Phylum{g % 4}; c__Class{g % 6}; o__Order{g}; f__Family{g}; g__Genus{g}")
    return sequences, np.array(asv_optimum), taxa


def _samples(
    rng: np.random.Generator, optimum: np.ndarray, n: int, prefix: str
) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """Sample ids, counts (samples x ASVs) and metadata rows."""
    ids, rows, counts = [], [], []
    for i in range(n):
        env = ("soil", "lake")[i % 2]
        ph = float(np.round(rng.uniform(*ENVIRONMENTS[env]), 2))
        response = np.exp(-0.5 * ((ph - optimum) / 0.8) ** 2) * rng.lognormal(0.0, 0.7, len(optimum))
        present = rng.random(len(optimum)) < 0.6  # each sample misses some ASVs altogether, as real ones do
        share = response * present + 1e-4
        depth = int(rng.integers(1500, 4000))
        counts.append(rng.multinomial(depth, share / share.sum()))
        sid = f"{prefix}{i + 1:03d}"
        ids.append(sid)
        rows.append({"sample-id": sid, "pH": f"{ph:.2f}", "environment": env, "study": f"STUDY_{'AB'[i % 3 == 0]}"})
    return ids, np.array(counts), rows


def _write_biom(path: Path, counts: np.ndarray, feature_ids: list[str], sample_ids: list[str]) -> None:
    keep = counts.sum(axis=0) > 0  # a QIIME 2 table holds only features seen in its samples
    table = Table(counts[:, keep].T.astype(float), [f for f, k in zip(feature_ids, keep) if k], sample_ids)
    with h5py.File(path, "w") as fh:
        table.to_hdf5(fh, GENERATOR)


def _write_metadata(path: Path, rows: list[dict[str, str]]) -> None:
    lines = ["sample-id\tpH\tenvironment\tstudy", "#q2:types\tnumeric\tcategorical\tcategorical"]
    lines += [f"{r['sample-id']}\t{r['pH']}\t{r['environment']}\t{r['study']}" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "qiime2"))
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    sequences, optimum, taxa = _asvs(rng)
    ids = [hashlib.md5(s.encode()).hexdigest() for s in sequences]
    with open(out / "dna-sequences.fasta", "w") as fh:
        fh.writelines(f">{i}\n{s}\n" for i, s in zip(ids, sequences))
    with open(out / "taxonomy.tsv", "w") as fh:
        fh.write("Feature ID\tTaxon\tConfidence\n")
        fh.writelines(f"{i}\t{t}\t0.99\n" for i, t in zip(ids, taxa))
    sample_ids, counts, rows = _samples(rng, optimum, TRAIN_SAMPLES, "S")
    _write_biom(out / "feature-table.biom", counts, ids, sample_ids)
    _write_metadata(out / "sample-metadata.tsv", rows)
    new_ids, new_counts, new_rows = _samples(rng, optimum, NEW_SAMPLES, "NEW")
    _write_biom(out / "new-samples.biom", new_counts, ids, new_ids)
    _write_metadata(out / "new-samples-metadata.tsv", new_rows)
    print(f"wrote {out}: {len(sample_ids)} samples and {len(new_ids)} new ones, {len(ids)} ASVs")


if __name__ == "__main__":
    main()
