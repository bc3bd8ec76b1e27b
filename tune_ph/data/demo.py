"""Deterministic synthetic microbial-DNA → pH dataset in the hub schema, for offline runs and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)

# name: (weight, mean pH, sd pH). Means and spreads are loosely those of real habitats.
ENVIRONMENTS: dict[str, tuple[float, float, float]] = {
    "soil": (0.28, 6.2, 1.3),
    "lake": (0.14, 7.4, 0.7),
    "marine": (0.12, 8.1, 0.25),
    "hot spring": (0.12, 5.5, 2.2),
    "acid mine drainage": (0.11, 3.0, 0.7),
    "peatland": (0.11, 4.6, 0.6),
    "soda lake": (0.12, 9.6, 0.5),
}
NUM_FAMILIES = 8
TAXA_PER_FAMILY = 4
ARCHAEAL_FAMILIES = 2  # the first families count as Archaea in the Bacteria/Archaea columns
_PH_RANGE = (1.5, 11.5)
# All taxa share one template length and reads are trimmed to lengths drawn independently of the
# taxon, as quality trimming does, so read or set length carries no information about pH.
TEMPLATE_LENGTH = 420
READ_LENGTH = (250, 400)
# Every template is built from blocks of 5 of each base (GC 50 %): with differing base composition,
# a base count alone would tell taxa apart.
_BLOCK = np.repeat(_BASES, 5)


def _random_seq(rng: np.random.Generator, length: int) -> np.ndarray:
    # Blocks of exactly balanced composition: any read prefix has (almost) the same base counts.
    blocks = [rng.permutation(_BLOCK) for _ in range(-(-length // len(_BLOCK)))]
    return np.concatenate(blocks)[:length]


def _mutate(rng: np.random.Generator, seq: np.ndarray, rate: float) -> np.ndarray:
    out = seq.copy()
    hits = np.flatnonzero(rng.random(len(seq)) < rate)
    # Adding 1..3 (mod 4) to the base index always changes the base.
    idx = np.searchsorted(_BASES, out[hits])
    out[hits] = _BASES[(idx + rng.integers(1, 4, size=len(hits))) % 4]
    return out


def _diverge(rng: np.random.Generator, seq: np.ndarray, fraction: float) -> np.ndarray:
    # Shuffling the bases of random positions within each block changes the sequence but no block's
    # composition.
    out = seq.copy()
    for start in range(0, len(seq), len(_BLOCK)):
        block = out[start : start + len(_BLOCK)]
        pos = np.flatnonzero(rng.random(len(block)) < fraction)
        block[pos] = block[rng.permutation(pos)]
    return out


def _make_taxa(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Templates, pH optima, niche widths and family of every taxon.

    Related taxa share a family ancestor (~80 % identity) and, as in real communities, a similar pH
    preference; every ancestor has the same base composition, so counting bases says little about
    pH: the model has to recognise which taxa are present from their sequence.
    """
    family_opt = rng.permutation(np.linspace(2.6, 10.0, NUM_FAMILIES))
    templates, optima, widths, family = [], [], [], []
    for f in range(NUM_FAMILIES):
        ancestor = _random_seq(rng, TEMPLATE_LENGTH)
        for _ in range(TAXA_PER_FAMILY):
            templates.append(_diverge(rng, ancestor, 0.3))
            optima.append(np.clip(family_opt[f] + rng.normal(0, 0.35), *_PH_RANGE))
            widths.append(rng.uniform(0.5, 0.9))
            family.append(f)
    return templates, np.array(optima), np.array(widths), np.array(family)


def make_demo(num_samples: int = 300, seed: int = 0) -> pd.DataFrame:
    """A synthetic dataset in the ``jedick/microbial-DNA-pH`` schema whose pH is learnable from the reads.

    Each sample draws a pH from its environment, then 20-60 reads from taxa in proportion to their
    Gaussian pH response (times log-normal noise); each read is the start of its taxon's template, trimmed to a
    random length, with a few point mutations, like amplicon reads of one 16S region.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    templates, optima, widths, family = _make_taxa(rng)
    n_taxa = len(templates)
    archaeal = family < ARCHAEAL_FAMILIES

    env_names = list(ENVIRONMENTS)
    weights = np.array([ENVIRONMENTS[e][0] for e in env_names])
    env_idx = rng.choice(len(env_names), size=num_samples, p=weights / weights.sum())

    rows = []
    for i in range(num_samples):
        env = env_names[env_idx[i]]
        _, mean, sd = ENVIRONMENTS[env]
        ph = float(np.clip(rng.normal(mean, sd), *_PH_RANGE))
        response = np.exp(-0.5 * ((ph - optima) / widths) ** 2)
        abundance = response * rng.lognormal(0.0, 0.5, n_taxa) + 1e-3  # rare off-niche reads
        n_reads = int(rng.integers(20, 61))
        taxa = rng.choice(n_taxa, size=n_reads, p=abundance / abundance.sum())
        reads = []
        for t in taxa:
            length = int(rng.integers(READ_LENGTH[0], READ_LENGTH[1] + 1))
            reads.append(_mutate(rng, templates[t][:length], 0.01).tobytes().decode("ascii"))
        study = f"DEMO_{env.replace(' ', '_')}_{'AB'[i % 2]}"
        rows.append(
            {
                "sample_id": f"DEMO{i:05d}",
                "study_name": study,
                "pH": round(ph, 2),
                "sequences": reads,
                "num_sequences": len(reads),
                "total_DNA_length": sum(len(r) for r in reads),
                "sample": f"synthetic {env} sample {i}",
                "environment": env,
                "Bacteria": int((~archaeal[taxa]).sum()),
                "Archaea": int(archaeal[taxa].sum()),
            }
        )
    return pd.DataFrame(rows, columns=list(rows[0]))
