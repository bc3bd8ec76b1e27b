"""The reference baselines a DNA model must beat: k-mer profiles of a sample's reads -> scikit-learn regressors."""
