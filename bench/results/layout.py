"""Where gradbench results live under a results root, and the errors about them:

    results/<run_id>/<cell_id>.parquet   one file per finished cell (or bench train trajectory)
    results/_runs/<run_id>.json          run metadata and the request (for --resume)
    results/_runs/<run_id>/...           the run's errors/ and corrupt/ files

The reading (gradbench.results.reading) and writing (gradbench.results.store) sides both build
on these paths; gradbench.results.store re-exports them."""

from __future__ import annotations

from pathlib import Path

RUNS_DIR = "_runs"


class ResultsError(ValueError):
    """Files that are not readable gradbench results, or an unwritable results folder."""


class RunMetadataMissing(ResultsError):
    """A run folder without its metadata file (a copied folder, or a lone file)."""


class StorageFull(ResultsError):
    """Writing failed for lack of space (or quota): what was written before is intact."""


def run_json_path(run_dir: Path) -> Path:
    """Where a run folder's metadata lives: <root>/_runs/<run_id>.json."""
    return run_dir.parent / RUNS_DIR / f"{run_dir.name}.json"


def run_files_dir(run_dir: Path) -> Path:
    """The run's own folder in the metadata area: <root>/_runs/<run_id>/ (errors, corrupt)."""
    return run_dir.parent / RUNS_DIR / run_dir.name


def run_dirs(root: Path) -> list[Path]:
    """The run folders under a results root, oldest first (run ids sort by time)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def finished_cells(run_dir: Path) -> set[str]:
    """The cell files in a run folder, by name (not checked: see `checked_cells`)."""
    return {p.stem for p in run_dir.glob("*.parquet")} if run_dir.is_dir() else set()


def result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet")
                      if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    raise ResultsError(f"{path} does not exist; give a results .parquet file or folder "
                       "(bench run writes them under results/)")
