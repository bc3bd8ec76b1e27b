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
NUM_FAMILIES = 12
# Each family's amplicon has two hypervariable stretches with VARIANTS variants each; a clade is one variant of
# each (VARIANTS**2 clades per family), and STRAINS strains of every clade differ by point mutations.
VARIANTS = 3
STRAINS = 3
ARCHAEAL_FAMILIES = 2  # the first families count as Archaea in the Bacteria/Archaea columns
_PH_RANGE = (1.5, 11.5)
_OPTIMA = (2.5, 10.0)  # where niche optima lie
# Like denoised V4 amplicon reads (ASVs): every read spans the same amplicon, so all have its length and read or set
# length carries no information about pH.
READ_LENGTH = 250
HYPERVARIABLE = ((20, 90), (140, 210))  # two stretches of 70 bases, 50 apart: no k-mer of k <= 8 spans both
STRAIN_DIVERGENCE = 0.015  # strains of one clade: ~98.5 % identity
SEQUENCING_ERRORS = 0.01  # substitutions per base of every read
ABUNDANCE_NOISE = 1.0  # sd of the log-normal factor on each taxon's abundance in each sample
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


def _make_taxa(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Templates, pH optima, niche widths and clade of every taxon.

    Within a family, clade (i, j) carries variant i of the first hypervariable stretch and variant j of the second,
    and its pH niche is the family's niche number (i + j) mod VARIANTS. So every variant of either stretch occurs
    equally in every niche, and the strains' point mutations are shared by all clades of the family: what a whole
    sample's k-mer counts show (which variants and mutations are present, which families) says little about pH,
    while which *combination* one read carries (its clade, ~80 % identity to its nearest other clade) says it.
    A family's niches are spread evenly over the pH range, so which families are present says little too.
    """
    templates, optima, widths, clade = [], [], [], []
    lo, hi = _OPTIMA
    for f in range(NUM_FAMILIES):
        ancestor = _random_seq(rng, READ_LENGTH)
        variants = [[_random_seq(rng, stop - start) for _ in range(VARIANTS)] for start, stop in HYPERVARIABLE]
        niche = lo + rng.permutation((rng.uniform() + np.arange(VARIANTS) / VARIANTS) % 1.0) * (hi - lo)
        strains = [_mutate(rng, ancestor, STRAIN_DIVERGENCE) for _ in range(STRAINS)]
        for i in range(VARIANTS):
            for j in range(VARIANTS):
                for strain in strains:
                    template = strain.copy()  # its mutations inside the stretches are overwritten just below
                    for (start, stop), variant in zip(HYPERVARIABLE, (variants[0][i], variants[1][j])):
                        template[start:stop] = variant
                    templates.append(template)
                    optima.append(np.clip(niche[(i + j) % VARIANTS] + rng.normal(0, 0.3), *_PH_RANGE))
                    widths.append(rng.uniform(0.5, 0.9))
                    clade.append((f * VARIANTS + i) * VARIANTS + j)
    return templates, np.array(optima), np.array(widths), np.array(clade)


def make_demo(num_samples: int = 300, seed: int = 0) -> pd.DataFrame:
    """A synthetic dataset in the ``jedick/microbial-DNA-pH`` schema whose pH is learnable from which organisms the
    reads come from, not from a whole sample's k-mer counts.

    324 taxa (12 families x 9 clades x 3 strains; see _make_taxa). Each sample draws a pH from its environment,
    then 20-60 reads from taxa in proportion to their Gaussian pH response (times log-normal noise), so a sample
    holds many taxa and few reads of each; each read is its taxon's 250-base amplicon with 1 % substitution
    errors.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    templates, optima, widths, clade = _make_taxa(rng)
    n_taxa = len(templates)
    archaeal = clade < ARCHAEAL_FAMILIES * VARIANTS**2

    env_names = list(ENVIRONMENTS)
    weights = np.array([ENVIRONMENTS[e][0] for e in env_names])
    env_idx = rng.choice(len(env_names), size=num_samples, p=weights / weights.sum())

    rows = []
    for i in range(num_samples):
        env = env_names[env_idx[i]]
        _, mean, sd = ENVIRONMENTS[env]
        ph = float(np.clip(rng.normal(mean, sd), *_PH_RANGE))
        response = np.exp(-0.5 * ((ph - optima) / widths) ** 2)
        abundance = response * rng.lognormal(0.0, ABUNDANCE_NOISE, n_taxa) + 1e-3  # rare off-niche reads
        n_reads = int(rng.integers(20, 61))
        taxa = rng.choice(n_taxa, size=n_reads, p=abundance / abundance.sum())
        reads = [_mutate(rng, templates[t], SEQUENCING_ERRORS).tobytes().decode("ascii") for t in taxa]
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
