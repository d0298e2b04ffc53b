"""The pytest plugin as another project sees it: a test file that registers its own estimators and
uses the `gradbench` fixture, which must come from the installed pytest11 entry point (the file
imports nothing from bench), run in a fresh pytest process."""

pytest_plugins = ["pytester"]

EXTERNAL_TESTS = '''
import torch

from gradbench.estimators import get_estimator, register_estimator

torch.set_num_threads(1)
pathwise = get_estimator("pathwise")
SETTINGS = {"sigma": 1.0, "k": [0.0, 10.0], "dim": 3}


@register_estimator("my-pathwise", family="pathwise", unbiased=True, requires=pathwise.requires)
def my_pathwise(problem, n):
    return pathwise.fn(problem, n)


@register_estimator("my-biased", family="pathwise", unbiased=True, requires=pathwise.requires)
def my_biased(problem, n):
    # Off by a quarter of a standard deviation: |bias| / SE ~ 0.25 sqrt(4000) ~ 16.
    return {k: v + 0.25 * v.std(dim=0) for k, v in pathwise.fn(problem, n).items()}


@register_estimator("my-noisy", family="pathwise", unbiased=True, requires=pathwise.requires,
                    evals=3)
def my_noisy(problem, n):
    # Unbiased, variance exactly 1.5x: x1 + 0.5 (x2 - x3) from independent draws.
    x1, x2, x3 = (pathwise.fn(problem, n) for _ in range(3))
    return {k: x1[k] + 0.5 * (x2[k] - x3[k]) for k in x1}


def test_passes(gradbench, tmp_path):
    gradbench.assert_unbiased("my-pathwise", suite="gaussian-quadratic", settings=SETTINGS)
    baseline = tmp_path / "baseline.parquet"
    gradbench.run("my-pathwise", suite="gaussian-quadratic", settings=SETTINGS,
                  seed=1).to_parquet(baseline)
    current = gradbench.run("my-pathwise", suite="gaussian-quadratic", settings=SETTINGS, seed=2)
    gradbench.assert_no_variance_regression(current, baseline)


def test_biased(gradbench):
    gradbench.assert_unbiased("my-biased", suite="gaussian-quadratic", settings=SETTINGS)


def test_noisier(gradbench, tmp_path):
    baseline = gradbench.run("my-pathwise", suite="gaussian-quadratic", settings=SETTINGS, seed=1)
    current = gradbench.run("my-noisy", suite="gaussian-quadratic", settings=SETTINGS, seed=2)
    gradbench.assert_no_variance_regression(current.assign(estimator="my-pathwise"), baseline)
'''


def test_external_project_uses_the_fixture(pytester):
    pytester.makepyfile(test_external=EXTERNAL_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=300)
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    assert "my-biased is biased on gaussian-quadratic: 12 of 12 coordinates" in text
    assert "gradbench check failed" in text
    assert "variance: my-pathwise gaussian-quadratic" in text
    # The passing test really ran the helpers: no error about a missing fixture.
    assert "fixture 'gradbench' not found" not in text
