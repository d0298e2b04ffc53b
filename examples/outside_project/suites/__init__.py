"""This project's own suites (a generic package name, on purpose)."""
