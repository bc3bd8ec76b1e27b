"""The search: YAML space -> SearchSpec, Ray Tune (OptunaSearch + ASHA) over training, its console and outcome."""
