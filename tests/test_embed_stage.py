"""The read-vector stage: progress a user sees (reads/s, time left), the picklable encoder, the stage as Ray tasks
named embed_shard with the single-process vectors, and the search's shared_vectors on the console."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL, motif_dataset

from hyena_dna import HyenaDNAConfig, HyenaDNAModel
from tune_ph import progress as progress_module
from tune_ph.model import embeddings
from tune_ph.progress import Progress
from tune_ph.search import embed_stage

pytestmark = pytest.mark.usefixtures("one_thread")

LINE = re.compile(
    r"read vectors: \d+% \([\d,]+ of [\d,]+ reads\), [\d,]+ reads/s, "
    r"(about [\d.]+ (s|min|h) left|less than 1 s left|done)"
)


def _backbone(seed: int = 0) -> HyenaDNAModel:
    torch.manual_seed(seed)
    return HyenaDNAModel(HyenaDNAConfig.from_dict({**TINY_MODEL, "vocab_size": 16})).eval()


def test_progress_prints_a_line_every_tenth_with_reads_per_second_and_time_left():
    out = io.StringIO()
    progress = Progress(1000, mode="lines", stream=out)
    for _ in range(40):
        progress.update(25)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10, lines
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert lines[0].startswith("read vectors: 10% (100 of 1,000 reads)") and lines[-1].endswith("done")


def test_progress_says_done_only_when_every_read_is_done():
    # A fast stage has well under a second left at 90 %: that is not "done".
    out = io.StringIO()
    progress = Progress(10, mode="lines", stream=out)
    for _ in range(10):
        progress.update(1)
    lines = out.getvalue().splitlines()
    assert [line.endswith("done") for line in lines] == [False] * 9 + [True], lines
    assert lines[8].endswith("less than 1 s left") and all(LINE.fullmatch(line) for line in lines), lines


def test_counted_items_count_once_the_loop_body_is_done_with_them():
    progress = Progress(5, mode="off", unit="samples")
    seen = []
    for item in progress.counted(range(5)):
        seen.append((item, progress.done))  # the item in hand is not done yet
        if item == 2:
            continue  # a skipped item is done too
    assert seen == [(i, i) for i in range(5)] and progress.done == 5


def test_progress_off_and_log_modes_print_nothing(capsys, caplog):
    caplog.set_level("INFO", logger=progress_module.__name__)
    for mode in ("off", "log"):
        progress = Progress(10, mode=mode)
        progress.update(10)
        progress.close()
    assert capsys.readouterr().out == ""
    assert any(LINE.fullmatch(r.getMessage()) for r in caplog.records if r.levelname == "INFO")


def test_compute_shows_progress_on_the_console_when_it_is_not_a_terminal(capsys):
    dataset = motif_dataset(n_samples=20, max_length=64)
    embeddings.compute(_backbone(), dataset, batch_size=4, progress="lines")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 5 and all(LINE.fullmatch(line) for line in lines), lines


def test_a_pickled_encoder_embeds_with_the_drivers_weights_not_a_fresh_init():
    dataset = motif_dataset(n_samples=12, max_length=64)
    backbone = _backbone(seed=1)
    expected = embeddings.compute(backbone, dataset, batch_size=5, progress="off")
    torch.manual_seed(99)  # a worker's random state: must not matter
    encoder = pickle.loads(pickle.dumps(embeddings.BackboneEncoder(backbone)))
    assert encoder._built is None
    representatives, inverse = embeddings.distinct_sets(dataset)
    shard = embeddings.shard_of(dataset, representatives)
    got = encoder(shard, batch_size=3)[inverse]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_a_compiled_encoder_gives_the_eager_vectors_and_a_failed_compile_stays_eager(monkeypatch, caplog):
    dataset = motif_dataset(n_samples=12, max_length=64)
    backbone = _backbone(seed=3)
    representatives, _ = embeddings.distinct_sets(dataset)
    shard = embeddings.shard_of(dataset, representatives)
    eager = embeddings.BackboneEncoder(backbone)(shard, batch_size=5)
    assert len(shard) % 5, "the last batch must be partial: it is filled up to the compiled shape"
    compiled = embeddings.BackboneEncoder(backbone, compile=True)
    monkeypatch.setattr(embeddings, "_COMPILED", {})
    calls = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or real_compile(model, **kw))
    with caplog.at_level("INFO", logger="tune_ph.model.embeddings"):
        got = compiled(shard, batch_size=5, precision="fp32")
        # this process's compiled forward, not a second compile
        again = compiled(shard.part(0, 7), batch_size=5, precision="fp32")
    np.testing.assert_allclose(got, eager, atol=1e-5, rtol=1e-6)  # 'sum' pools reach 1e2: float32 rounding
    np.testing.assert_allclose(again, eager[:7], atol=1e-5, rtol=1e-6)
    assert calls == [{"dynamic": False}] and "backbone compiled in" in caplog.text
    assert compiled.precision_used(precision="fp32") == "fp32 compiled"

    def broken(model, **kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(embeddings, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="tune_ph.model.embeddings"):
        fallback = compiled(shard, batch_size=5)
    np.testing.assert_array_equal(fallback, eager)  # the eager forward itself
    assert "torch.compile not used (RuntimeError: no C++ compiler); embedding eagerly" in caplog.text
    assert compiled.precision_used() == "fp32 eager"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("native", [True, False])
def test_a_compiled_forward_runs_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, caplog, native):
    # The capability is what is patched; the compile and the bf16 autocast are real (emulated on a CPU without it).
    monkeypatch.setattr(embeddings, "cpu_bf16_native", lambda capability=None: native)
    monkeypatch.setattr(embeddings, "_COMPILED", {})
    dataset = motif_dataset(n_samples=12, max_length=64)
    shard = embeddings.shard_of(dataset, embeddings.distinct_sets(dataset)[0])
    backbone = _backbone(seed=3)
    eager = embeddings.BackboneEncoder(backbone)(shard, batch_size=5)
    encoder = embeddings.BackboneEncoder(backbone, compile=True)
    with caplog.at_level("INFO", logger="tune_ph.model.embeddings"):
        got = encoder(shard, batch_size=5)
    if native:
        assert encoder.precision_used() == "bf16 compiled" and "bf16 autocast, native on this CPU" in caplog.text
        assert _cosines(got, eager).min() >= embeddings.BF16_MIN_COSINE
        assert np.abs(got - eager).max() > 1e-4  # bf16 rounding shows: it did run in bf16
    else:
        assert encoder.precision_used() == "fp32 compiled" and "bf16" not in caplog.text
        np.testing.assert_allclose(got, eager, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("failure", ["disagrees", "raises"])
def test_bf16_that_fails_leaves_the_compiled_forward_in_fp32(monkeypatch, caplog, failure):
    monkeypatch.setattr(embeddings, "cpu_bf16_native", lambda capability=None: True)
    monkeypatch.setattr(embeddings, "_COMPILED", {})
    calls = []

    def compile_(model, **kw):  # the eager forward as the "compiled" one, which fails under bf16 as asked
        calls.append(kw)

        def forward(ids):
            if failure == "raises" and torch.is_autocast_enabled("cpu"):
                raise RuntimeError("no bf16 kernel")
            return model(ids)

        return forward

    if failure == "disagrees":
        monkeypatch.setattr(embeddings, "BF16_MIN_COSINE", 1.5)  # no cosine reaches it
    monkeypatch.setattr(torch, "compile", compile_)
    dataset = motif_dataset(n_samples=6, max_length=64)
    shard = embeddings.shard_of(dataset, np.arange(len(dataset)))
    backbone = _backbone(seed=3)
    encoder = embeddings.BackboneEncoder(backbone, compile=True)
    with caplog.at_level("INFO", logger="tune_ph.model.embeddings"):
        got = encoder(shard, batch_size=4)
    reason = "minimum cosine to fp32" if failure == "disagrees" else "RuntimeError: no bf16 kernel"
    assert len(calls) == 2 and f"bf16 autocast not used ({reason}" in caplog.text
    assert encoder.precision_used() == "fp32 compiled" and "embedding eagerly" not in caplog.text
    np.testing.assert_allclose(got, embeddings.BackboneEncoder(backbone)(shard, batch_size=4), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize(
    ("reads", "device", "worth"), [(19_999, "cpu", False), (20_000, "cpu", True), (10**6, "cuda", False)]
)
def test_only_a_process_with_enough_reads_on_a_cpu_compiles(reads, device, worth):
    assert embeddings.worth_compiling(reads, device) is worth


def test_shard_parts_are_the_datasets_padded_tokens():
    dataset = motif_dataset(n_samples=6, max_length=64)
    index = np.arange(len(dataset))
    shard = embeddings.shard_of(dataset, index)
    part = shard.part(3, 7)
    ids, mask = part.padded(0, 4)
    want_ids, want_mask = dataset.tokens_of(index[3:7])
    torch.testing.assert_close(ids, want_ids)
    torch.testing.assert_close(mask, want_mask)


@pytest.mark.parametrize(("n", "workers"), [(0, 2), (1, 2), (63, 2), (1000, 2), (100_000, 2), (10**6, 32)])
def test_shard_sizes_cover_every_read_in_bounded_parts(n, workers):
    sizes = embed_stage.shard_sizes(n, workers)
    assert sum(sizes) == n
    assert all(0 < s <= embed_stage.MAX_SHARD for s in sizes)
    if n >= embed_stage.MIN_SHARD * embed_stage.SHARDS_PER_WORKER * workers:
        assert len(sizes) >= embed_stage.SHARDS_PER_WORKER * workers
    assert max(sizes, default=0) - min(sizes, default=0) <= 1


@pytest.mark.slow  # Ray (the session's instance, 2 CPUs)
def test_the_stage_as_ray_tasks_gives_the_single_process_vectors(ray_session, monkeypatch):
    monkeypatch.setattr(embed_stage, "MIN_SHARD", 8)  # several tasks even on tiny data
    dataset = motif_dataset(n_samples=40, max_length=64)
    backbone = _backbone(seed=2)
    single = embeddings.compute(backbone, dataset, batch_size=32, progress="off")
    report: list[dict] = []
    stage = embeddings.compute(backbone, dataset, progress="off", runner=embed_stage.ray_runner("cpu", report=report))
    assert stage.shape == single.shape
    np.testing.assert_allclose(stage, single, atol=1e-5, rtol=0)
    distinct = len(embeddings.distinct_sets(dataset)[0])
    assert len(report) == len(embed_stage.shard_sizes(distinct, 2)) > 1
    assert sum(row["reads"] for row in report) == distinct
    assert all(row["task"] == embed_stage.TASK_NAME for row in report)
    assert all(row["precision"] == "fp32 eager" for row in report)  # too few reads per worker to compile


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "native"),
    [
        ("AVX2", True, True, False),  # flags cannot make an AVX2 build use bf16
        ("DEFAULT", False, False, False),
        ("AVX512", False, False, False),  # AVX512 without avx512_bf16 or AMX: emulated
        ("AVX512", True, False, True),
        ("AVX512", False, True, True),
    ],
)
def test_bf16_is_decided_by_the_cpus_capability(monkeypatch, capability, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert embeddings.cpu_bf16_native() is native
    assert embeddings.precision_for(cpu, "auto") == ("bf16" if native else "fp32")
    assert embeddings.precision_for(cpu) == "fp32"  # the cached vectors' precision unless asked
    if not native:
        with pytest.raises(ValueError, match="not native"):
            embeddings.precision_for(cpu, "bf16")


def test_bf16_vectors_agree_with_fp32_where_bf16_is_native():
    if not embeddings.cpu_bf16_native():
        pytest.skip(f"no native bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()})")
    dataset = motif_dataset(n_samples=8, max_length=64)
    shard = embeddings.shard_of(dataset, np.arange(len(dataset)))
    encoder = embeddings.BackboneEncoder(_backbone(seed=3))
    a = encoder(shard).reshape(len(shard), -1)
    b = encoder(shard, precision="bf16").reshape(len(shard), -1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.999, cosine.min()


@pytest.mark.slow  # a subprocess that starts Ray
def test_bench_embeddings_stage_prints_its_figures():
    import subprocess
    import sys

    from helpers import ROOT

    tiny = '{"d_model": 16, "n_layer": 1, "d_inner": 32, "filter_order": 16, "l_max": 66}'
    argv = ["--stage", "--reads", "150", "--length", "64", "--model-config", tiny, "--workers", "1,2", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_embeddings.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    number = r"\d+(\.\d+)?"
    assert re.search(rf"matmul peak, 1 threads: fp32 {number} GFLOP/s, bf16 {number} GFLOP/s \(CPU capability", out)
    assert re.search(rf"MFLOP/read \(projections {number}, long conv {number}, MLP {number}\)", out)
    assert re.search(rf"driver, 1 threads, fp32: {number} reads/s, {number} GFLOP/s \({number}% of the fp32", out)
    match = re.search(r"Ray, 1 worker\(s\), fp32 eager \(max \|diff\| to the driver's fp32 vectors ([\d.e+-]+)\)", out)
    assert match and float(match.group(1)) <= 1e-5, out
    # 150 reads in shards of 64: the worker ran three tasks, so a rate without its first (compiling) one exists
    assert re.search(rf"per worker after its first task .*: {number} reads/s, {number} GFLOP/s \({number}% of", out)
    # Two workers' scaling beside the machine's own for two independent processes
    assert re.search(rf"scaling 1 -> 2 workers: x{number} .*matmul processes at once against 1: x{number}", out)


def test_steady_rate_leaves_out_each_workers_first_task(monkeypatch):
    from helpers import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_embeddings import steady_rate

    rows = [
        {"pid": 1, "reads": 100, "seconds": 10.0},  # worker 1 compiles
        {"pid": 2, "reads": 100, "seconds": 20.0},  # worker 2 compiles
        {"pid": 1, "reads": 300, "seconds": 1.0},
        {"pid": 2, "reads": 100, "seconds": 1.0},
    ]
    assert steady_rate(rows) == 200.0
    assert steady_rate(rows[:2]) is None


def test_cached_vectors_are_memory_mapped_from_an_npy_with_its_hash_beside_it(tmp_path, caplog):
    dataset = motif_dataset(n_samples=16, max_length=64)
    backbone = _backbone(seed=4)
    expected = embeddings.compute(backbone, dataset, progress="off")
    written = embeddings.set_vectors(backbone, dataset, cache_dir=tmp_path, progress="off")
    path = embeddings.cache_path(backbone, dataset, tmp_path)
    assert path.suffix == ".npy" and embeddings.hash_path(path).is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no scratch left behind
    read = embeddings.set_vectors(backbone, dataset, cache_dir=tmp_path, progress="off")
    for vectors in (written, read):
        assert isinstance(vectors, np.memmap) and not vectors.flags.writeable
        np.testing.assert_array_equal(vectors, expected)
    # the streamed hash is files.content_hash of the whole array
    from tune_ph import files

    assert embeddings.stream_hash(path, path.name) == files.content_hash({"vectors": expected}, path.name)
    # a changed byte is caught by the hash and recomputed
    del written, read
    with open(path, "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x7f")
    again = embeddings.set_vectors(backbone, dataset, cache_dir=tmp_path, progress="off")
    assert any("does not match its hash" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(again, expected)


@pytest.mark.parametrize("content", [b"not an array", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O', 'fortran_order'"])
def test_a_damaged_npy_entry_is_refused_before_it_is_mapped(tmp_path, content):
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        embeddings.open_npy(path)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never writes"):
        embeddings.open_npy(path)
    np.save(path, np.zeros((3, 4), dtype=np.float32))
    with open(path, "ab") as fh:
        fh.write(b"extra")
    with pytest.raises(ValueError, match="size does not match"):
        embeddings.open_npy(path)


@pytest.mark.slow  # Ray (the session's instance, 2 CPUs)
def test_the_ray_stage_writes_into_the_memory_mapped_cache_entry(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_stage, "MIN_SHARD", 8)
    dataset = motif_dataset(n_samples=24, max_length=64)
    backbone = _backbone(seed=5)
    single = embeddings.compute(backbone, dataset, progress="off")
    runner = embed_stage.ray_runner("cpu")
    vectors = embeddings.set_vectors(backbone, dataset, cache_dir=tmp_path, progress="off", runner=runner)
    assert isinstance(vectors, np.memmap)
    np.testing.assert_allclose(vectors, single, atol=1e-5, rtol=0)


def test_a_fit_is_done_once_and_shared_by_key(tmp_path, monkeypatch):
    import threading

    calls = []

    def fit():
        calls.append(1)
        return {"centroids": np.arange(6, dtype=np.float32).reshape(3, 2)}

    rows = np.arange(10)
    key = embeddings.fit_key("vectors-abc", "pca-kmeans-v1", rows=rows, pooling="pool", clusters=3, dims=2, seed=0)
    assert key != embeddings.fit_key(
        "vectors-abc", "pca-kmeans-v1", rows=rows, pooling="pool", clusters=3, dims=2, seed=1
    )
    assert key != embeddings.fit_key(
        "vectors-abc", "pca-kmeans-v1", rows=rows[:-1], pooling="pool", clusters=3, dims=2, seed=0
    )
    monkeypatch.setattr(embeddings, "_FITS", {})
    # Trials asking at once (separate file descriptions, as separate processes): one fits, the other waits for it.
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(embeddings.fit_once(key, fit, tmp_path))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    monkeypatch.setattr(embeddings, "_FITS", {})  # another process: from the cache on disk
    again = embeddings.fit_once(key, fit, tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(again["centroids"], fit()["centroids"])
    # a damaged entry is fitted again
    monkeypatch.setattr(embeddings, "_FITS", {})
    (tmp_path / embeddings.FIT_SUBFOLDER / f"{key}.npz").write_bytes(b"junk")
    embeddings.fit_once(key, fit, tmp_path)
    assert len(calls) == 3  # (the fit() above was the comparison)
