"""tune_ph: fine-tune HyenaDNA with a regression head to predict environmental pH, searched with Ray Tune."""

# Imported first so that its OpenMP preamble runs before any submodule imports torch (see tune_ph/cli.py).
from tune_ph import cli as _cli  # noqa: F401

__version__ = "0.1.0"
