"""This project's own estimators (a generic package name, on purpose)."""
