"""Benchmark the clusters fit's memory at 10^6 reads: the streamed fit (ReadClusters.fit_arrays on the cache's
memory map and the train rows) beside the one it replaced (vectors[train] copied into RAM, scikit-learn's PCA).

The vectors are a memory-mapped random float32 .npy (written once in --folder, reused); the fit runs in a child
process whose peak RSS (getrusage of the child: its own heap and the mapped pages it kept resident) is reported
beside what its imports alone hold, and the time of the fit alone. One line of result per run:

    python benchmarks/bench_cluster_fit.py                 # streamed, 10^6 reads x 128 -> 1024 clusters x 32 dims
    python benchmarks/bench_cluster_fit.py --fit old       # the v1 fit, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FITS = ("new", "old")


def write_vectors(path: Path, reads: int, width: int) -> None:
    """Random vectors of unequal variances (a PCA with a clear top), written a block at a time (never all in RAM)."""
    from tune_ph.model.streamed import release_pages

    rng = np.random.default_rng(0)
    mixing = (rng.normal(size=(width, width)) * np.linspace(2.0, 0.1, width)[:, None]).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(reads, width))
    for start in range(0, reads, 65_536):
        stop = min(start + 65_536, reads)
        out[start:stop] = rng.standard_normal((stop - start, width), dtype=np.float32) @ mixing + 1.0
        release_pages(out)
    out.flush()
    del out
    os.replace(tmp, path)


def old_fit(mapped: np.ndarray, rows: np.ndarray, clusters: int, dims: int, seed: int) -> None:
    """The v1 fit ("pca-kmeans-v1", before the streamed one): the train rows copied out, scikit-learn's PCA."""
    import torch
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA

    data = torch.from_numpy(mapped)[torch.from_numpy(rows)].detach().float().cpu().numpy()  # fit.py's copy
    pca = PCA(n_components=dims, whiten=True, random_state=seed).fit(data)
    center = pca.mean_.astype(np.float32)
    projection = (pca.components_ / np.sqrt(pca.explained_variance_)[:, None]).T.astype(np.float32)
    embedded = torch.nn.functional.normalize(torch.from_numpy((data - center) @ projection), dim=-1).numpy()
    MiniBatchKMeans(clusters, batch_size=4096, n_init=1, max_iter=20, random_state=seed).fit(embedded)


def child(args: argparse.Namespace) -> None:
    """The fit alone, in this process: prints its seconds and the RSS its imports hold, as JSON."""
    import warnings

    import sklearn.cluster  # noqa: F401 - imported before the baseline RSS is taken, as the fit imports it
    import torch

    from tune_ph.model.clusters import ReadClusters

    torch.set_num_threads(args.threads)
    mapped = np.load(args.path, mmap_mode="r")
    rows = np.arange(len(mapped))  # every read a train read
    imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if args.fit == "old":
            old_fit(mapped, rows, args.clusters, args.dims, seed=0)
        else:
            ReadClusters(mapped.shape[1], args.clusters, args.dims).fit_arrays(mapped, seed=0, rows=rows)
    print(json.dumps({"seconds": time.perf_counter() - started, "imports_kb": imports}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", choices=FITS, default="new", help="new: the streamed fit; old: the v1 fit it replaced")
    p.add_argument("--reads", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=128, help="the vectors' width (d_model)")
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--dims", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--folder", default="/tmp", help="where the random vectors' .npy is written (once)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    path = Path(args.folder) / f"bench_cluster_fit_{args.reads}x{args.width}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_vectors(path, args.reads, args.width)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, __file__, "--child", "--path", str(path), *sys.argv[1:]]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    print(
        f"{args.fit} fit: {args.reads:,} reads x {args.width} -> {args.clusters} clusters x {args.dims} dims, "
        f"{result['seconds']:.1f} s, peak RSS {peak_kb / 2**20:.2f} GiB "
        f"(imports {result['imports_kb'] / 2**20:.2f} GiB; vectors {path.stat().st_size / 2**30:.2f} GiB on disk)"
    )


if __name__ == "__main__":
    main()
