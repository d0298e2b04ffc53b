"""gradbench: a harness that measures Monte Carlo gradient estimators side by side."""

__version__ = "0.1.0"
