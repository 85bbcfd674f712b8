"""The pipeline file: YAML -> a validated `Spec` (spec.py), and every static check on it (checks.py)."""
