"""A lever for read vectors that know lineage, measured: HyenaDNA fine-tuned so that every read regresses its sample's
pH (multiple-instance: a read is labelled with its sample's pH), for a CPU budget, beside a ridge on each read's k-mer
profile with the same reads and labels. Does the backbone learn, in that budget, the per-read signal k-mers show?

    python benchmarks/bench_read_ph.py --dataset ../shared/data/realph16s --minutes 9
    python benchmarks/bench_read_ph.py --dataset ../shared/data/realph16s --minutes 9 --save runs/read_ph

One line per model: the k-mer ridge's read-level and sample-level val R², then the backbone's reads seen, reads/s,
train loss (first vs last 100 steps), read-level val R² and sample-level val R² (the mean of each val sample's read
predictions).
--save writes the tuned backbone as a checkpoint folder (`--model DIR` with from_scratch false reads it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from torch import nn

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, tokenizer
from tune_ph.data.sources import load_samples
from tune_ph.data.split import split_samples
from tune_ph.model.read_encoders import KmerEncoder, kmer_vectors, pool_hidden

_WINDOW = 100  # steps averaged for the first and last train loss


def read_tokens(df, ids: list[str], length: int) -> list[list[np.ndarray]]:
    """Each sample's reads as token arrays (the last `length` tokens, as the model reads them)."""
    by_id = df.set_index("sample_id")
    return [[tokenizer.truncate(tokenizer.encode(r), length) for r in by_id.loc[s, "sequences"]] for s in ids]


def padded(reads: list[np.ndarray], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenizer.pad_left(reads, length)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def kmer_ridge(train, y_train, val, y_val, k: int, length: int) -> tuple[float, float]:
    """Read-level and sample-level (mean of a sample's reads) val R² of a ridge on each read's k-mer profile."""
    encoder = KmerEncoder(k)

    def profiles(samples):
        reads = [r for sample in samples for r in sample]
        vectors = kmer_vectors(encoder, lambda rows: padded([reads[i] for i in rows], length), len(reads))
        owner = np.repeat(np.arange(len(samples)), [len(s) for s in samples])
        return vectors.numpy(), owner

    x_train, owner_train = profiles(train)
    x_val, owner_val = profiles(val)
    read_pred = Ridge(alpha=1e-3).fit(x_train, y_train[owner_train]).predict(x_val)
    sample_pred = np.bincount(owner_val, read_pred) / np.bincount(owner_val)
    return r2_score(y_val[owner_val], read_pred), r2_score(y_val, sample_pred)


def recalibrate(norm: nn.BatchNorm1d, forward, reads: list[np.ndarray], batch: int = 256) -> None:
    """The norm's running statistics recomputed on train reads with the final backbone (in eval mode): the ones kept
    during training trail a backbone that moved, and would shift every val prediction."""
    norm.train()
    norm.reset_running_stats()
    norm.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for start in range(0, len(reads), batch):
            forward(reads[start : start + batch])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="demo")
    p.add_argument("--model", default="hyenadna-tiny-1k-seqlen", help="a size name (random weights, seeded)")
    p.add_argument("--minutes", type=float, default=9.0, help="training budget (wall clock)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--samples", type=int, default=32, help="samples per step")
    p.add_argument("--reads", type=int, default=2, help="reads drawn per sample per step")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate of the backbone")
    p.add_argument("--head-lr", type=float, default=1e-2, help="learning rate of the head")
    p.add_argument("--eval-reads", type=int, default=16, help="reads per val sample in the sample-level R²")
    p.add_argument("--max-length", type=int, default=264)
    p.add_argument("--k", type=int, default=5, help="k of the k-mer ridge")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save", default=None, help="write the tuned backbone to this folder")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    df = load_samples(a.dataset)
    split = split_samples(df, seed=42)
    ph = df.set_index("sample_id")["pH"]
    y_train, y_val = ph.loc[split["train"]].to_numpy(), ph.loc[split["val"]].to_numpy()
    train = read_tokens(df, split["train"], a.max_length)
    val = read_tokens(df, split["val"], a.max_length)

    ridge_read, ridge_sample = kmer_ridge(train, y_train, val, y_val, a.k, a.max_length)
    print(
        f"read-ph kmer{a.k}-ridge: read val R² {ridge_read:.3f}, sample val R² (mean of its reads) {ridge_sample:.3f}"
    )

    torch.manual_seed(a.seed)
    backbone = HyenaDNAModel(HyenaDNAConfig.from_name(a.model))
    d = backbone.config.d_model
    # Pooled vectors of a random backbone differ little from read to read: standardised, the head sees them.
    head = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, 1))
    optimizer = torch.optim.AdamW(
        [{"params": backbone.parameters(), "lr": a.lr}, {"params": head.parameters(), "lr": a.head_lr}],
        weight_decay=0.01,
    )
    mean, scale = y_train.mean(), y_train.std()
    target = torch.tensor((y_train - mean) / scale, dtype=torch.float32)
    rng = np.random.default_rng(a.seed)

    def predict(reads: list[np.ndarray]) -> torch.Tensor:
        ids, mask = padded(reads, a.max_length)
        return head(pool_hidden(backbone(ids), mask, "pool")).squeeze(-1)

    losses: list[float] = []
    reads_seen = 0
    started = time.perf_counter()
    while time.perf_counter() - started < a.minutes * 60 and (a.max_steps is None or len(losses) < a.max_steps):
        chosen = rng.choice(len(train), min(a.samples, len(train)), replace=False)
        picks = [(i, j) for i in chosen for j in rng.choice(len(train[i]), min(a.reads, len(train[i])), replace=False)]
        loss = nn.functional.mse_loss(predict([train[i][j] for i, j in picks]), target[[i for i, _ in picks]])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        reads_seen += len(picks)
        if len(losses) % _WINDOW == 0:
            print(f"step {len(losses)}: loss {np.mean(losses[-_WINDOW:]):.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started

    backbone.eval()  # no dropout from here on, the norm's statistics included
    recalibrate(head[0], predict, [r for sample in train[:256] for r in sample[:8]])
    head.eval()
    with torch.inference_mode():
        read_pred = [predict(reads[: a.eval_reads]).numpy() * scale + mean for reads in val]
    val_pred = [p.mean() for p in read_pred]
    read_r2 = r2_score(np.repeat(y_val, [len(p) for p in read_pred]), np.concatenate(read_pred))
    print(
        f"read-ph {a.model}: {reads_seen:,} reads in {seconds / 60:.1f} min ({reads_seen / seconds:.0f} reads/s), "
        f"train loss {np.mean(losses[:_WINDOW]):.3f} -> {np.mean(losses[-_WINDOW:]):.3f}, "
        f"read val R² {read_r2:.3f}, sample val R² (mean of {a.eval_reads} reads) {r2_score(y_val, val_pred):.3f}"
    )
    if a.save:
        backbone.save_pretrained(a.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
