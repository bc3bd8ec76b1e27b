"""tune_ph: fine-tune HyenaDNA with a regression head to predict environmental pH, searched with Ray Tune."""

__version__ = "0.1.0"
