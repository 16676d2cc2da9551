"""The one adapter to the chutes SDK's internals."""
