"""The JAX peer of issue 13, measured in the same run as gradbench: optax's old
`monte_carlo.pathwise_jacobians` (removed after optax 0.2.2) under `jax.jit`, pathwise gradients
of E[sum (z - k)^2], z ~ N(mu, sigma), at dim 1 in float32: the per-sample gradients only, no
statistics. Skipped unless the `peer` extra is installed:

    .venv/bin/pip install -c constraints.txt -e '.[dev,peer]'
    .venv/bin/pytest benchmarks --benchmark-only -k "peer or (pathwise and dim1-cpu-float32)"

The summary's goal line then compares gradbench's float32 pathwise cell (estimates and
statistics) with this rate instead of the issue's figure from another machine. Each round is
timed in process CPU time, as gradbench's rounds are (XLA's threads included), and alternates
with `jax.random.normal` of as many elements, the peer's own RNG floor.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from throughput_cases import PEER_CASE, Case

jax = pytest.importorskip("jax", reason="the peer benchmark needs the `peer` extra")
monte_carlo = pytest.importorskip("optax.monte_carlo",
                                  reason="the peer benchmark needs optax<=0.2.2 (`peer` extra)")
from jax import numpy as jnp  # noqa: E402
from optax._src.utils import multi_normal  # noqa: E402

SAMPLES = 1 << 22  # as many estimates as gradbench's dim-1 rounds (benchmarks/test_throughput.py)
ROUNDS = 5
MU, SIGMA, K = 1.0, 1.0, 0.0  # test_throughput.GAUSSIAN


def _peer_rounds(samples: int):
    """The jitted peer estimator and the RNG floor, each returning a finished array."""
    def cost(z):
        return jnp.sum((z - K) ** 2)

    estimate = jax.jit(lambda params, key: monte_carlo.pathwise_jacobians(
        cost, params, multi_normal, key, samples))
    draws = jax.jit(lambda key: jax.random.normal(key, (samples, 1), dtype=jnp.float32))
    params = (jnp.full((1,), MU, jnp.float32), jnp.full((1,), jnp.log(SIGMA), jnp.float32))
    return estimate, draws, params


def test_optax_peer_pathwise_dim1_float32(benchmark, record) -> None:
    estimate, draws, params = _peer_rounds(SAMPLES)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * ROUNDS + 4))
    grads = jax.block_until_ready(estimate(params, next(keys)))  # compile, and check it
    d_mu = np.asarray(grads[0][:, 0], dtype=np.float64)
    mean, se = d_mu.mean(), d_mu.std() / SAMPLES ** 0.5
    assert abs(mean - 2 * (MU - K)) < 5 * se, (mean, se)  # timing a correct estimator
    jax.block_until_ready(draws(next(keys)))
    case = record(Case(PEER_CASE, "cpu", "float32", 1,
                       SAMPLES, floor="jax.random.normal"))

    def limit() -> None:
        start = time.process_time()
        jax.block_until_ready(draws(next(keys)))
        case.limit_s.append(time.process_time() - start)

    def peer() -> None:
        start = time.process_time()
        jax.block_until_ready(estimate(params, next(keys)))
        case.harness_s.append(time.process_time() - start)

    benchmark.extra_info.update(samples=SAMPLES, jax=jax.__version__)
    benchmark.pedantic(peer, setup=limit, rounds=ROUNDS, iterations=1)
