"""Write tests/baseline.parquet: the estimator's cells at seed 1 (the tests run seed 0)."""

from pathlib import Path

import estimators.halved  # noqa: F401  (registers score-function-halved)

import gradbench

CELLS = {"estimator": "score-function-halved", "suite": "gaussian-quadratic",
         "settings": {"dim": 1, "sigma": 1.0, "k": 0.0}, "samples": 4000}

if __name__ == "__main__":
    out = Path(__file__).parent / "tests" / "baseline.parquet"
    gradbench.run(**CELLS, seed=1).to_parquet(out)
    print(f"wrote {out}")
