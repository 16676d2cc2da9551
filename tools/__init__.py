"""chutes-wrappers: ship an existing HTTP service image as a Chute (helpers for deploy_*.py modules)."""
