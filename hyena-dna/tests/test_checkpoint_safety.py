"""weights.ckpt reading refuses storages whose declared sizes or types disagree with the archive, before allocating.

The files here are crafted by hand (a pickle with persistent storage ids + zip entries), as an attacker would.
"""

import io
import pickle
import time
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from hyena_dna import HyenaDNAConfig, HyenaDNAModel, UnsafeCheckpointError
from hyena_dna.pretrained import read_checkpoint_tensors


class _StorageRef:
    """Pickled as the persistent id torch.save writes: ("storage", <storage class>, key, location, numel)."""

    def __init__(self, key: str, storage_type: type, numel: int) -> None:
        self.key, self.storage_type, self.numel = key, storage_type, numel


class _TensorOf:
    """Pickled as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), as torch.save does."""

    def __init__(self, ref: _StorageRef, size: int) -> None:
        self.ref, self.size = ref, size

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.ref, 0, (self.size,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def craft(path: Path, state: dict, entries: dict, compressed: bool = False) -> Path:
    """A torch-zip checkpoint {"state_dict": state}; entries: key -> bytes, or an int = that many zero bytes."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"state_dict": state})
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, data in entries.items():
            if isinstance(data, int):  # stream zeros so the test itself never holds them
                with zf.open(f"archive/data/{key}", "w", force_zip64=True) as fh:
                    chunk = bytes(1 << 20)
                    for start in range(0, data, len(chunk)):
                        fh.write(chunk[: min(len(chunk), data - start)])
            else:
                zf.writestr(f"archive/data/{key}", data)
    return path


def peak_bytes_while_refused(path: Path, match: str, **kwargs) -> tuple[int, float, str]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    try:
        with pytest.raises(UnsafeCheckpointError, match=match) as err:
            read_checkpoint_tensors(path, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, time.perf_counter() - start, str(err.value)


def test_crafted_file_reads_when_consistent(tmp_path):
    # The crafting helper itself makes files the reader accepts: the refusals below are about the sizes.
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    path = craft(tmp_path / "ok.ckpt", {"w": _TensorOf(_StorageRef("0", torch.FloatStorage, 4), 4)}, {"0": data})
    assert read_checkpoint_tensors(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_declared_size_far_larger_than_the_data_is_refused_unallocated(tmp_path):
    # 2**40 float32 elements (4 TiB) declared over a 16-byte entry.
    ref = _StorageRef("0", torch.FloatStorage, 2**40)
    path = craft(tmp_path / "weights.ckpt", {"w": _TensorOf(ref, 4)}, {"0": bytes(16)})
    peak, seconds, msg = peak_bytes_while_refused(path, "declares")
    assert str(path) in msg and "storage '0'" in msg and "16 bytes" in msg
    assert peak < 1 << 20 and seconds < 5


def test_declared_size_smaller_than_the_data_is_refused(tmp_path):
    ref = _StorageRef("0", torch.FloatStorage, 2)
    path = craft(tmp_path / "weights.ckpt", {"w": _TensorOf(ref, 2)}, {"0": bytes(4096)})
    with pytest.raises(UnsafeCheckpointError, match=r"declares 2 x torch.float32 = 8 bytes .* holds 4096 bytes"):
        read_checkpoint_tensors(path)


def test_one_storage_under_several_dtypes_is_refused(tmp_path):
    # The reported bomb: one storage referenced under many dtypes, each reference a fresh copy. Here the sizes
    # are even consistent (64 bytes = 16 float32 = 8 float64 = 64 uint8), so only the type rule can catch it.
    types = [(torch.FloatStorage, 16), (torch.DoubleStorage, 8), (torch.ByteStorage, 64), (torch.LongStorage, 8)]
    state = {f"t{i}": _TensorOf(_StorageRef("0", cls, n), n) for i, (cls, n) in enumerate(types)}
    path = craft(tmp_path / "weights.ckpt", state, {"0": bytes(range(64))})
    peak, _, msg = peak_bytes_while_refused(path, "one storage, two types")
    assert str(path) in msg and "storage '0'" in msg
    assert peak < 1 << 20


def test_same_storage_same_dtype_is_shared_not_reread(tmp_path):
    # Legitimate aliasing (the filter's shared Sin freq): one storage, one dtype, read once.
    ref = _StorageRef("0", torch.FloatStorage, 4)
    path = craft(tmp_path / "weights.ckpt", {"a": _TensorOf(ref, 4), "b": _TensorOf(ref, 4)}, {"0": bytes(16)})
    tensors = read_checkpoint_tensors(path)
    assert tensors["a"].untyped_storage().data_ptr() == tensors["b"].untyped_storage().data_ptr()


def test_compressed_bomb_is_refused_before_decompressing(tmp_path):
    # 32 MiB of zeros deflate to ~32 KiB; the declared size matches, the expansion ratio does not.
    numel = (32 << 20) // 4
    path = craft(
        tmp_path / "weights.ckpt",
        {"w": _TensorOf(_StorageRef("0", torch.FloatStorage, numel), numel)},
        {"0": 32 << 20},
        compressed=True,
    )
    assert path.stat().st_size < 1 << 20
    peak, seconds, msg = peak_bytes_while_refused(path, "expands from")
    assert str(path) in msg and "archive/data/0" in msg  # refused from the zip directory, before the pickle
    assert peak < 1 << 20 and seconds < 5


def test_missing_entry_and_unknown_storage_type(tmp_path):
    path = craft(tmp_path / "a.ckpt", {"w": _TensorOf(_StorageRef("7", torch.FloatStorage, 1), 1)}, {})
    with pytest.raises(UnsafeCheckpointError, match="no data entry archive/data/7"):
        read_checkpoint_tensors(path)
    path = craft(tmp_path / "b.ckpt", {"w": _TensorOf(_StorageRef("0", OrderedDict, 1), 1)}, {"0": bytes(4)})
    with pytest.raises(UnsafeCheckpointError, match="unsupported storage type"):
        read_checkpoint_tensors(path)


def test_total_cap(tmp_path):
    model = HyenaDNAModel(HyenaDNAConfig(d_model=16, n_layer=1, d_inner=32, filter_order=16, l_max=66))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "weights.ckpt"
    assert read_checkpoint_tensors(weights, max_bytes=weights.stat().st_size)  # a real file fits its own size
    with pytest.raises(UnsafeCheckpointError, match="over the cap of 1000"):
        read_checkpoint_tensors(weights, max_bytes=1000)


def test_a_damaged_pickle_is_one_clear_error(tmp_path):
    import zipfile

    from hyena_dna.pretrained import UnsafeCheckpointError, read_checkpoint_tensors

    path = tmp_path / "weights.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04not a pickle at all")
    with pytest.raises(UnsafeCheckpointError, match="cannot read the checkpoint's pickle"):
        read_checkpoint_tensors(path)
