"""bayes-logistic: Bayesian logistic regression on the breast-cancer data, the experiment of the
best-known estimator survey (Mohamed, Rosca, Figurnov & Mnih 2020, sec. 8.3).

Data: scikit-learn's breast-cancer set, 569 rows, 30 standardised features plus a bias column
(31 weights), labels y in {-1, +1}. Prior N(0, I); mean-field q = N(mean, diag(exp(log_scale)^2)).
The cost of a minibatch of B rows is the minibatch negative ELBO scaled to the data set,

    f(w; mean, log_scale) = -(N / B) sum_n log sigmoid(y_n x_n . w) + KL(q || N(0, I)),

with the KL analytic: it is the cost's direct term (it depends on the parameters, not on w), so
E_q[f] is the negative ELBO's minibatch estimate and its gradient is what SGD would follow.

Truth (truth_method "quadrature"): u_n = y_n x_n . w is N(mu_n, s_n^2) under q, so each row's
expected log-likelihood and its derivatives are one-dimensional Gaussian integrals, computed by
the trapezoidal rule of gradbench.suites._logistic_quadrature (accuracy 1e-12 relative per
integral, tested against a 40-digit reference); the KL's gradient (mean, exp(2 log_scale) - 1)
is exact.

Points. `init` is q = the prior (mean 0, log_scale 0: KL = 0). `optimum` maximises the exact
full-data ELBO, found by a deterministic optimisation (find_optimum() below) and cached in
memory, once per process: it takes a fraction of a second on one core, needs no invalidation
when the code changes (a disk cache would have to be keyed by the rule, the data and the code),
and every process that builds an `optimum` problem computes bit-identical parameters from the
same code on the same machine.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Normal

import gradbench.suites._datasets as _datasets
import gradbench.suites._logistic_quadrature as quadrature
from gradbench.core.capabilities import DifferentiableCost, GaussianLinearLayer
from gradbench.core.params import at_least, one_of
from gradbench.core.problem import Params, Problem
from gradbench.core.suite import Setting, register_suite
from gradbench.core.training import Evaluation

F64 = torch.float64
POINTS = ("init", "optimum")
WEIGHTS = _datasets.BREAST_CANCER_WEIGHTS
_OPTIMUM_TOLERANCE = 1e-11  # max |d negative ELBO / d theta| at the optimum


def _split(theta: Tensor) -> tuple[Tensor, Tensor]:
    return theta[:WEIGHTS], theta[WEIGHTS:]


def find_optimum() -> tuple[Tensor, Tensor]:
    """(mean, log_scale) maximising the exact full-data ELBO, in float64 on the CPU.

    Newton's method on the exact negative ELBO (quadrature), with its closed-form gradient and
    Hessian (gradbench.suites._logistic_quadrature), from mean 0 and log_scale -1 (scales near
    the optimum's, so the rule's node counts stay small). A step is the Newton step where the
    Hessian is positive definite, else the steepest-descent one, halved until the objective
    decreases enough (Armijo); once max |gradient| < 1e-6 full Newton steps converge
    quadratically (the objective's rounding would stall a line search there). It stops at
    max |gradient| < 1e-11, the rounding level of sums of 569 terms. Deterministic: fixed start
    and rules, no randomness; about ten iterations.
    """
    x, y = _datasets.breast_cancer()
    theta = torch.cat([torch.zeros(WEIGHTS, dtype=F64), torch.full((WEIGHTS,), -1.0, dtype=F64)])
    value = quadrature.negative_elbo(x, y, *_split(theta))
    for _ in range(100):
        gradient = torch.cat(quadrature.negative_elbo_gradient(x, y, *_split(theta)))
        largest = float(gradient.abs().max())
        if largest < _OPTIMUM_TOLERANCE:
            return _split(theta)
        factor, info = torch.linalg.cholesky_ex(
            quadrature.negative_elbo_hessian(x, y, *_split(theta)))
        direction = (-torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
                     if int(info) == 0 else -gradient)
        step, slope = 1.0, float(gradient @ direction)
        while largest > 1e-6 and step > 1e-12:
            trial = quadrature.negative_elbo(x, y, *_split(theta + step * direction))
            if trial <= value + 1e-4 * step * slope:
                break
            step /= 2
        theta = theta + step * direction
        value = quadrature.negative_elbo(x, y, *_split(theta))
    raise RuntimeError(f"bayes-logistic: the ELBO optimisation did not converge (max |gradient| "
                       f"{largest:.3g})")


@functools.cache
def optimum() -> tuple[Tensor, Tensor]:
    """find_optimum(), once per process."""
    return find_optimum()


def point_params(point: str) -> dict[str, Tensor]:
    """The parameters at `point` (float64, CPU, fresh tensors)."""
    if point == "init":
        zeros = torch.zeros(WEIGHTS, dtype=F64)
        return {"mean": zeros, "log_scale": zeros.clone()}
    mean, log_scale = optimum()
    return {"mean": mean.clone(), "log_scale": log_scale.clone()}


def _normal(mean: Tensor, log_scale: Tensor) -> Normal:
    return Normal(mean, log_scale.exp())


def logistic_problem(params64: Params, rows: Tensor, settings: dict[str, object],
                     device: torch.device, dtype: torch.dtype) -> Problem:
    """The gradient problem at `params64` (float64) on the minibatch `rows` of the data set."""
    x_all, y_all = _datasets.breast_cancer()
    x64, y64 = x_all[rows], y_all[rows]
    scale = x_all.shape[0] / rows.shape[0]  # N / B
    truth = quadrature.negative_elbo_gradient(x64, y64, params64["mean"], params64["log_scale"],
                                              scale)

    def convert(value: Tensor) -> Tensor:
        return value.detach().to(device=device, dtype=dtype)

    x, y = convert(x64), convert(y64)
    signed = convert(y64.unsqueeze(-1) * x64)  # rows y_n x_n: u = z . (y_n x_n), one pass fewer

    def kl(params: Params) -> Tensor:
        return quadrature.kl_to_standard_normal(params["mean"], params["log_scale"])

    def head(pre: Tensor, params: Params) -> Tensor:
        return -scale * F.logsigmoid(y * pre[..., 0]).sum(-1) + kl(params)

    def cost(z: Tensor, params: Params) -> Tensor:
        return -scale * F.logsigmoid(z @ signed.T).sum(-1) + kl(params)

    def moments(params: Params) -> tuple[Tensor, Tensor, None, None]:
        return params["mean"].unsqueeze(-2), params["log_scale"].exp().unsqueeze(-2), None, None

    return Problem(
        params={name: convert(value) for name, value in params64.items()},
        distribution=_normal,
        cost=cost,
        exact_gradient={"mean": convert(truth[0]), "log_scale": convert(truth[1])},
        truth_method="quadrature",
        settings=settings,
        data={"X": x, "y": y},
        capabilities=(GaussianLinearLayer(x, moments, head), DifferentiableCost()),
    )


def _check(batch: int, **_: object) -> str | None:
    rows = _datasets.BREAST_CANCER_ROWS
    if batch > rows:
        return (f"batch={batch} exceeds the {rows} rows of the breast-cancer set: use "
                f"batch <= {rows}")
    return None


class LogisticTrainer:
    """SGD on the minibatch negative ELBO (the survey's experiment: breast cancer, batch 32),
    for `bench train` (gradbench.core.training.Trainer). Trajectories start at `point`."""

    objective = "negative ELBO"
    train_rows = _datasets.BREAST_CANCER_ROWS

    def __init__(self, batch: int, point: str, *, device: torch.device, dtype: torch.dtype
                 ) -> None:
        self.batch, self.point, self.device, self.dtype = batch, point, device, dtype

    def initial(self) -> dict[str, Tensor]:
        return {name: value.to(device=self.device, dtype=self.dtype)
                for name, value in point_params(self.point).items()}

    def problem(self, params: Params, rows: Tensor) -> Problem:
        params64 = {name: value.detach().to("cpu", F64).clone() for name, value in params.items()}
        settings = {"batch": int(rows.shape[0]), "point": self.point}
        return logistic_problem(params64, rows.to("cpu"), settings, self.device, self.dtype)

    def evaluate(self, params: Params, generator: torch.Generator) -> dict[str, Evaluation]:
        """The exact full-data negative ELBO (quadrature) and the distance to its optimum:
        deterministic, so `generator` is not used."""
        mean = params["mean"].detach().to("cpu", F64)
        log_scale = params["log_scale"].detach().to("cpu", F64)
        x, y = _datasets.breast_cancer()
        value = quadrature.negative_elbo(x, y, mean, log_scale)
        best_mean, best_log_scale = optimum()
        distance = torch.cat([mean - best_mean, log_scale - best_log_scale]).norm()
        return {"negative_elbo": Evaluation(float(value), 0.0, higher_is_better=False),
                "distance_to_optimum": Evaluation(float(distance), 0.0, higher_is_better=False)}


# Default grid (6 cells): batch 1, 32 (the survey's) and all 569 rows, at the prior (wide q:
# pre-activation scales s_n ~ 5) and at the ELBO's optimum (narrow q, and a full-batch gradient
# of ~0: every unbiased estimator's mean must vanish there). 4,000 estimates per cell: variances
# to ~2-3%; measure-valued costs 124 evaluations of f per estimate (4 per weight), ~70,000
# log-sigmoids at the full batch, and dominates the default run.
@register_suite(
    "bayes-logistic",
    offers=(GaussianLinearLayer, DifferentiableCost),
    settings=(
        Setting("batch", int, (1, 32, _datasets.BREAST_CANCER_ROWS), "minibatch rows (the "
                "first `batch` of one fixed permutation); 569 = the full set", at_least(1)),
        Setting("point", str, POINTS, "init (q = the prior N(0, I)) or optimum (the exact "
                "ELBO's maximiser)", one_of(*POINTS)),
    ),
    samples=4_000,
    check_combination=_check,
    trainer=LogisticTrainer,
)
def bayes_logistic(batch: int, point: str, *, device: torch.device, dtype: torch.dtype
                   ) -> Problem:
    """Bayesian logistic regression, breast cancer: minibatch negative ELBO, analytic KL."""
    rows = _datasets.minibatch_rows(_datasets.BREAST_CANCER_ROWS, batch)
    return logistic_problem(point_params(point), rows, {"batch": batch, "point": point}, device,
                            dtype)
