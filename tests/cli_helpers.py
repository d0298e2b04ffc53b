"""Shared by the CLI-facing tests: run `bench` in process and check the bad-input contract."""

from typer.testing import CliRunner

from bench.cli import app

_runner = CliRunner()


def invoke(*args):
    """Run `bench ARGS...` in process (CliRunner); arguments may be paths or numbers."""
    return _runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> None:
    """Bad input: exit code 2, no traceback, one line on stderr containing every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
