"""Tests for tune_ph.files: atomic writes."""

from __future__ import annotations


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Results are shared: an atomic write must not leave mkstemp's owner-only 0600 behind."""
    import os
    import stat

    from tune_ph.files import write_json

    path = write_json(tmp_path / "metrics.json", {"r2": float("nan")})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text().strip().endswith("}") and "null" in path.read_text()
