"""Training without Ray: fit (epoch loop, validation, early stopping), prediction, pretraining, environment records."""
