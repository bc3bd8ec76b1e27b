"""Hostile configs and checkpoints: upper bounds, the memory a config declares, and sizes checked before reading.

Every bomb here is small and fast to build: its zip directory declares a huge size that the file never holds,
and the refusal is checked to come before any allocation (peak RSS of a subprocess, or tracemalloc).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, UnsafeCheckpointError, max_length_of, memory, pretrained
from hyena_dna.config import MAX_VALUES
from hyena_dna.pretrained import read_checkpoint_skeleton, read_checkpoint_tensors


def tiny(**kw) -> HyenaDNAConfig:
    return HyenaDNAConfig(**{"d_model": 16, "n_layer": 1, "d_inner": 32, "l_max": 66, **kw})


def declare_size(path: Path, entry: str, size: int) -> None:
    """Patch a zip's directory (central and local header) so that `entry` declares `size` uncompressed bytes."""
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(entry)
        start = zf.start_dir
    struct.pack_into("<I", blob, info.header_offset + 22, size)
    pos = start
    while blob[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", blob, pos + 28)
        if blob[pos + 46 : pos + 46 + name_len].decode() == entry:
            struct.pack_into("<I", blob, pos + 24, size)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(blob))


# The child's own peak RSS: VmHWM of its address space (reset by exec). Not ru_maxrss: Linux carries the parent's
# peak over fork + exec into it, so under a big pytest it measures pytest.
PEAK_PRINT = """
def _vm_hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print("vmhwm", _vm_hwm())
"""


def rss_after(code: str) -> tuple[int, str]:
    """Run code in a fresh interpreter; (its own peak RSS in bytes, its output). The code's last line prints."""
    done = subprocess.run([sys.executable, "-c", code + PEAK_PRINT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split("vmhwm")[-1])
    return peak, done.stdout


# ------------------------------------------------------------------------------------------------ config bounds


@pytest.mark.parametrize("name", sorted(MAX_VALUES))
def test_every_architecture_field_has_an_upper_bound(name):
    with pytest.raises(ValueError, match=rf"config field '{name}' must be an integer from \d+ to {MAX_VALUES[name]}"):
        tiny(**{name: MAX_VALUES[name] + 1}).validate()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"d_model": 8192, "d_inner": 32768}, "d_model"),
        ({"layer": {"l_max": 2_000_000_000}}, "l_max"),
        ({"layer": {"l_max": 2e9}}, "l_max"),  # a float is not an integer
        ({"layer": 5}, "layer"),
        ({"layer": {"emb_dim": "5"}}, "emb_dim"),
        ({"embed_dropout": float("nan")}, "embed_dropout"),
        ({"modulate": "yes"}, "modulate"),
        ({"extra": [1]}, "extra"),
    ],
)
def test_hostile_config_json_is_one_line_naming_file_and_field(change, field, tmp_path):
    data = tiny().to_dict()
    for key, value in change.items():
        if key == "layer" and isinstance(value, dict):
            data["layer"].update(value)
        else:
            data[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    started = time.perf_counter()
    with pytest.raises(ValueError) as err:
        HyenaDNAConfig.from_json(path)
    message = str(err.value)
    assert str(path) in message and repr(field) in message and "\n" not in message, message
    assert time.perf_counter() - started < 2  # refused from the numbers, nothing built


def test_public_sizes_are_within_the_bounds():
    for name in pretrained.PRETRAINED_SIZES:
        HyenaDNAConfig.from_name(name).validate()
        HyenaDNAConfig.from_name(name + "-hf").validate()


def test_a_fifo_or_huge_config_json_is_refused_without_blocking(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    os.mkfifo(folder / "config.json")  # opening it for reading would block until a writer came
    with pytest.raises(ValueError, match="not a regular file"):
        HyenaDNAConfig.from_json(folder / "config.json")
    with pytest.raises(ValueError, match="without config.json"):  # is_file() is false for a FIFO
        max_length_of(folder)
    big = tmp_path / "big.json"
    big.write_text('{"d_model": 16, "pad": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(ValueError, match="far more than a config file"):
        HyenaDNAConfig.from_json(big)


def test_deeply_nested_config_json_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="config.json"):
        HyenaDNAConfig.from_json(path)


# ------------------------------------------------------------------------------------------------ model memory


@pytest.mark.parametrize(
    "config",
    [
        HyenaDNAConfig(),
        tiny(),
        tiny(n_layer=3, emb_dim=7, filter_order=8, local_order=5, hyena_order=3, num_inner_mlps=0, vocab_size=13),
    ],
    ids=["default", "tiny", "odd"],
)
def test_model_bytes_is_exact(config):
    model = HyenaDNAModel(config)
    real = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    assert memory.model_bytes(config) == real


def test_a_model_larger_than_available_memory_is_refused_before_it_is_built(monkeypatch):
    config = tiny(l_max=2_000_000)
    need = memory.build_bytes(config)
    with pytest.raises(memory.ModelTooLargeError, match="l_max 2000000.*only 1 MiB of memory is available"):
        memory.check_memory(config, available=1 << 20)
    memory.check_memory(config, available=need)  # exactly enough is enough
    monkeypatch.setattr(memory, "available_memory", lambda: need - 1)
    started = time.perf_counter()
    with pytest.raises(memory.ModelTooLargeError):
        HyenaDNAModel(config)
    assert time.perf_counter() - started < 1


def test_available_memory_is_a_positive_number_here():
    found = memory.available_memory()
    assert found is None or found > 0


# ------------------------------------------------------------------------------------------------ checkpoints


def test_skeleton_has_the_structure_and_no_tensor_memory(tmp_path):
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": {"a": torch.ones(3, 4), "b": torch.arange(5)}, "settings": {"lr": 0.1}}, path)
    obj, declared = read_checkpoint_skeleton(path)
    assert obj["settings"] == {"lr": 0.1}
    assert obj["state_dict"]["a"].device.type == "meta" and obj["state_dict"]["a"].shape == (3, 4)
    with zipfile.ZipFile(path) as zf:  # every entry's uncompressed size: the most torch.load could allocate
        assert declared == sum(info.file_size for info in zf.infolist()) > 3 * 4 * 4 + 5 * 8


def test_a_view_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": {"a": torch.ones(4)}}, path)
    blob = path.read_bytes()
    # The pickle's size tuple (4,) becomes (400,): a view 100 times larger than its 16-byte storage.
    with zipfile.ZipFile(path) as zf:
        pkl = zf.read("w/data.pkl")
    assert pkl.count(b"K\x04\x85") == 1  # BININT1 4, TUPLE1
    patched = pkl.replace(b"K\x04\x85", b"M\x90\x01\x85")  # BININT2 400
    with zipfile.ZipFile(path, "w") as zf, zipfile.ZipFile(io.BytesIO(blob)) as src:
        for info in src.infolist():
            zf.writestr(info, patched if info.filename.endswith("data.pkl") else src.read(info))
    for reader in (read_checkpoint_skeleton, read_checkpoint_tensors):
        with pytest.raises(UnsafeCheckpointError, match="reaches past its storage"):
            reader(path)


def _bomb(path: Path, declared: int) -> Path:
    """A 1-element checkpoint whose storage entry's directory declares `declared` bytes (deflated, never written)."""
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            info.compress_type = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            dst.writestr(info, data)
    declare_size(path, next(i.filename for i, _ in entries if "/data/" in i.filename), declared)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_a_2gib_declared_checkpoint_is_refused_with_low_memory(tmp_path):
    path = _bomb(tmp_path / "weights.ckpt", 2**31)
    assert path.stat().st_size < 1 << 20
    peak, out = rss_after(
        "import sys\nfrom hyena_dna.pretrained import read_checkpoint_tensors\n"
        f"try:\n    read_checkpoint_tensors({str(path)!r})\nexcept ValueError as err:\n    print('refused', err)\n"
    )
    assert "refused" in out and str(path) in out and "expands from" in out, out
    assert peak < 1 << 30, peak  # the interpreter and torch; never the declared 2 GiB


def test_load_pretrained_caps_a_weights_file_by_its_config(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    HyenaDNAModel(tiny()).save_pretrained(folder)
    # An extra 1 MiB tensor: a real file could hold optimizer state, but not 20 times the model.
    state = torch.load(folder / "weights.ckpt", weights_only=True)
    state["state_dict"]["junk"] = torch.zeros(1 << 18)
    torch.save(state, folder / "weights.ckpt")
    monkeypatch.setattr(pretrained, "CHECKPOINT_EXTRA_BYTES", 0)
    assert pretrained.checkpoint_cap(tiny()) < 1 << 20
    with pytest.raises(UnsafeCheckpointError, match="over the cap of"):
        HyenaDNAModel.from_pretrained(folder)
    monkeypatch.setattr(pretrained, "CHECKPOINT_EXTRA_BYTES", 2 << 20)
    HyenaDNAModel.from_pretrained(folder)  # within the cap: loads


def test_a_fifo_weights_file_is_refused_without_blocking(tmp_path):
    path = tmp_path / "weights.ckpt"
    os.mkfifo(path)
    with pytest.raises(ValueError, match="not a regular file"):
        read_checkpoint_tensors(path)


def test_a_weights_folder_must_carry_what_its_config_declares_before_it_is_built(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    HyenaDNAModel(tiny()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    # 0.8 G numbers (3.2 GB): below the bounds and, here, below the memory available; the file holds 20 k.
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 2048, "n_layer": 16, "d_inner": 8192}))
    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 30)
    built = []
    monkeypatch.setattr(HyenaDNAModel, "load_state_dict", lambda *a, **k: built.append(1))
    with pytest.raises(pretrained.CheckpointKeyError, match=r"its config declares 808,\d{3},\d{3} numbers, the file"):
        HyenaDNAModel.from_pretrained(folder)
    assert not built  # refused from a meta-device build; tests/test_hostile_files.py measures the peak RSS


def test_a_weights_file_with_non_finite_values_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    HyenaDNAModel(tiny()).save_pretrained(folder)
    state = torch.load(folder / "weights.ckpt", weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("ln_f.weight"))
    state["state_dict"][name][0] = float("inf")
    torch.save(state, folder / "weights.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"ln_f.weight holds NaN or infinite values"):
        HyenaDNAModel.from_pretrained(folder)
