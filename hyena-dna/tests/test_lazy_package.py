"""`import hyena_dna` loads no torch: its config and tokenizer serve command-line --help; the model loads on use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hyena_dna


def _fresh(statement: str) -> dict:
    code = f"import json, sys\n{statement}\nprint(json.dumps({{'torch': 'torch' in sys.modules}}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_package_and_its_config_import_no_torch():
    assert _fresh("import hyena_dna") == {"torch": False}
    assert _fresh("from hyena_dna import HyenaDNAConfig, max_length_of, tokenizer, PRETRAINED_SIZES") == {
        "torch": False
    }
    assert _fresh("from hyena_dna import HyenaDNAModel") == {"torch": True}  # the model does load it


def test_every_public_name_resolves_to_its_module():
    from hyena_dna import config, model, pretrained

    for name in hyena_dna.__all__:
        assert getattr(hyena_dna, name) is not None, name
    assert hyena_dna.HyenaDNAModel is model.HyenaDNAModel
    assert hyena_dna.HyenaDNAConfig is config.HyenaDNAConfig
    assert hyena_dna.PretrainedNotFoundError is pretrained.PretrainedNotFoundError
    assert set(hyena_dna.__all__) <= set(dir(hyena_dna))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'HyenaModel'"):
        hyena_dna.HyenaModel  # noqa: B018
    with pytest.raises(ImportError):
        from hyena_dna import HyenaModel  # noqa: F401
