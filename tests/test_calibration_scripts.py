"""scripts/calibrate_check.py's sharding: N processes filling one cache make and analyse the same
pairs as one process would, and a later unsharded call reports them without redoing any."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "calibrate_check.py"


def calibrate(cache: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--config", "weibull", "--samples", "200",
                           "--runs", "4", "--cache", str(cache), *extra],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_shards_make_and_analyse_pairs_and_the_unsharded_call_only_reports(tmp_path: Path) -> None:
    first = calibrate(tmp_path, "--shard", "0/2")
    second = calibrate(tmp_path, "--shard", "1/2")
    # whole pairs per shard, each analysed as soon as it is made
    assert [line.split()[:2] for line in first.splitlines()] == [
        ["seed", "1000"], ["seed", "1001"], ["pair", "0:"]]
    assert [line.split()[:2] for line in second.splitlines()] == [
        ["seed", "1002"], ["seed", "1003"], ["pair", "1:"]]
    assert not list(tmp_path.glob("report-*.json"))  # shards write no report
    final = calibrate(tmp_path)
    assert "cells in" not in final and "pair" not in final  # every run and analysis was cached
    report = json.loads(next(tmp_path.glob("report-weibull-*.json")).read_text())
    assert report["pairs"] == 2
    assert {"false_alarms", "false_alarm_ci", "power_runs"} <= report.keys()


def test_a_malformed_shard_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--config", "weibull", "--shard", "2/2",
                           "--cache", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert "write K/N with 0 <= K < N" in done.stderr
    assert "Traceback" not in done.stderr
