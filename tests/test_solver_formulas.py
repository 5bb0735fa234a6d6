"""Each published formula against a hand-derived scalar computation of the same steps.

The hand versions below are written out in Python floats from the published update rules (the
AMED-Plugin on each base solver, DPM-Solver++ in data and noise prediction, k-diffusion's LMS with its
coefficients integrated by scipy as k-diffusion does), one sample with a closed-form denoiser, so a
wrong weight, order or time in the package's tensor code shows up as a mismatch."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import GaussianModel
from scipy.integrate import quad

from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.solvers import SolverConfig, get_solver, make_schedule, sample
from amed_deploy.solvers.formulas import ADAMS_BASHFORTH, dynamic_threshold

MU, S = 0.2, 0.5
X0 = 57.0


def denoise(x: float, sigma: float, mu: float = MU) -> float:
    return (S * S * x + sigma * sigma * mu) / (S * S + sigma * sigma)


def run(solver: str, grid, r=None, c=None, a=None, mu: float = MU, **options) -> float:
    model = GaussianModel(torch.full((1, 1, 1, 1), mu, dtype=torch.float64), S, r=r, c=c, a=a)
    x, _ = sample(model, torch.full((1, 1, 1, 1), X0, dtype=torch.float64), grid, SolverConfig(solver, **options))
    return x.item()


GRID = [80.0, 9.7, 1.6, 0.47, 0.11, 0.002]  # 5 intervals, uneven on purpose


def geometric(t: float, t_next: float, r: float) -> float:
    return t_next**r * t ** (1 - r)


# ----------------------------------------------------------------------------------- AMED-Plugin


def hand_amed_dpm2(grid, r, c, a) -> float:
    x = X0
    for t, t_next in zip(grid, grid[1:]):
        d = (x - denoise(x, t)) / t
        s = geometric(t, t_next, r)
        x_s = x + (s - t) * d
        d_s = (x_s - denoise(x_s, a * s)) / s
        x = x + c * (t_next - t) * ((1 / (2 * r)) * d_s + (1 - 1 / (2 * r)) * d)
    return x


def test_dpm_solver_2_plugin_published_update_at_r_not_half():
    r, c, a = 0.3, 1.02, 0.97
    got = run("amed_dpm2", GRID, r=r, c=c, a=a)
    assert got == pytest.approx(hand_amed_dpm2(GRID, r, c, a), rel=1e-12, abs=1e-12)
    # ...which is not the AMED-Solver (x + c h d_s) unless r = 1/2
    assert abs(got - run("amed", GRID, r=r, c=c, a=a)) > 1e-2
    assert run("amed_dpm2", GRID, r=0.5, c=c, a=a) == pytest.approx(run("amed", GRID, r=0.5, c=c, a=a), rel=1e-13)


def _ab(d: float, buffer: list[float], max_order: int) -> float:
    p = min(max_order, len(buffer) + 1)
    coeffs = ADAMS_BASHFORTH[p - 1]
    return coeffs[0] * d + sum(coeffs[k] * buffer[-k] for k in range(1, p))


def hand_amed_ipndm(grid, r, c, a, max_order=4) -> float:
    x, buffer = X0, []
    for t, t_next in zip(grid, grid[1:]):
        d = (x - denoise(x, t)) / t
        s = geometric(t, t_next, r)
        x_s = x + (s - t) * _ab(d, buffer, max_order)
        buffer.append(d)
        d_s = (x_s - denoise(x_s, a * s)) / s
        x = x_s + c * (t_next - s) * _ab(d_s, buffer, max_order)  # c scales sub-step 2 only
        buffer.append(d_s)
    return x


@pytest.mark.parametrize("max_order", [4, 2])
def test_ipndm_plugin_equal_step_coefficients(max_order):
    r, c, a = 0.35, 1.01, 1.03
    got = run("amed_ipndm", GRID, r=r, c=c, a=a, max_order=max_order)
    assert got == pytest.approx(hand_amed_ipndm(GRID, r, c, a, max_order), rel=1e-12)
    assert abs(got - run("amed_ipndm_uneven", GRID, r=r, c=c, a=a, max_order=max_order)) > 1e-3


# ----------------------------------------------------------------------------------- DPM-Solver++


def _phis(h: float, predict_x0: bool) -> tuple[float, float, float]:
    if predict_x0:
        phi1 = math.expm1(-h)
        phi2 = phi1 / h + 1
    else:
        phi1 = math.expm1(h)
        phi2 = phi1 / h - 1
    return phi1, phi2, phi2 / h - 0.5


def hand_dpmpp_step(x, t, t_next, m, history, order, predict_x0, scale=1.0, weight=1.0) -> float:
    """One update as written in the DPM-Solver++ paper / diff-sampler: history = [(t, m)], newest last."""
    h = math.log(t / t_next)
    phi1, phi2, phi3 = _phis(h, predict_x0)
    if order == 1:
        inner = phi1 * m
    else:
        (t1, m1) = history[-1]
        r0 = math.log(t1 / t) / h
        d1_0 = (m - m1) / r0
        if order == 2:
            inner = phi1 * m + 0.5 * phi1 * d1_0
        else:
            (t2, m2) = history[-2]
            r1 = math.log(t2 / t1) / h
            d1_1 = (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            inner = (
                phi1 * m - phi2 * d1 + weight * phi3 * d2 if predict_x0 else phi1 * m + phi2 * d1 + weight * phi3 * d2
            )
    return t_next / t * x - scale * inner if predict_x0 else x - scale * t_next * inner


def hand_dpmpp(grid, orders, predict_x0=True, weight=1.0, mu=MU) -> float:
    x, history = X0, []
    for n, (t, t_next) in enumerate(zip(grid, grid[1:])):
        den = denoise(x, t, mu)
        m = den if predict_x0 else (x - den) / t
        x = hand_dpmpp_step(x, t, t_next, m, history, orders[n], predict_x0, weight=weight)
        history.append((t, m))
    return x


@pytest.mark.parametrize("predict_x0", [True, False])
@pytest.mark.parametrize(
    "solver,lower_order_final,orders",
    [
        ("dpmpp3m", True, [1, 2, 3, 2, 1]),  # diff-sampler: the orders come down again at the end
        ("dpmpp3m", False, [1, 2, 3, 3, 3]),
        ("dpmpp2m", True, [1, 2, 2, 2, 1]),
        ("dpmpp2m", False, [1, 2, 2, 2, 2]),
    ],
)
def test_dpm_solver_pp_multistep(solver, lower_order_final, orders, predict_x0):
    got = run(solver, GRID, predict_x0=predict_x0, lower_order_final=lower_order_final, thresholding=False)
    assert got == pytest.approx(hand_dpmpp(GRID, orders, predict_x0), rel=1e-12, abs=1e-12)


def test_dpmpp3m_exact_differs_only_in_the_second_difference_weight():
    got = run("dpmpp3m_exact", GRID, thresholding=False, lower_order_final=False)
    assert got == pytest.approx(hand_dpmpp(GRID, [1, 2, 3, 3, 3], weight=2.0), rel=1e-12)
    assert abs(got - run("dpmpp3m", GRID, thresholding=False, lower_order_final=False)) > 1e-4


def test_dpmpp2m_is_k_diffusion_sample_dpmpp_2m_without_lower_order_final():
    """k-diffusion's form: r = h_last / h, D' = (1 + 1/(2r)) D - 1/(2r) D_last, first order on the first
    step and on a step to sigma = 0 (where x = D)."""
    grid = [*GRID, 0.0]
    x, old = X0, None
    for i, (t, t_next) in enumerate(zip(grid, grid[1:])):
        den = denoise(x, t)
        if old is None or t_next == 0:
            x = den if t_next == 0 else t_next / t * x - math.expm1(-math.log(t / t_next)) * den
        else:
            h = math.log(t / t_next)
            r = math.log(grid[i - 1] / t) / h
            mixed = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = t_next / t * x - math.expm1(-h) * mixed
        old = den
    got = run("dpmpp2m", grid, lower_order_final=False, thresholding=False)
    assert got == pytest.approx(x, rel=1e-12, abs=1e-12)


def hand_amed_dpmpp(grid, r, c, a, predict_x0=True) -> float:
    """The plugin on the combined grid t_0, s_0, t_1, ...: orders over its 2(N-1) sub-steps with
    lower_order_final (k if k < 3 else min(3, 2N - 1 - k)), c on the whole phi-term of sub-step 2."""
    x, history, steps = X0, [], 2 * (len(grid) - 1)
    order = lambda k: k if k < 3 else min(3, steps + 1 - k)  # noqa: E731
    for n, (t, t_next) in enumerate(zip(grid, grid[1:])):
        den = denoise(x, t)
        m = den if predict_x0 else (x - den) / t
        s = geometric(t, t_next, r)
        x_s = hand_dpmpp_step(x, t, s, m, history, order(2 * n + 1), predict_x0)
        history.append((t, m))
        den_s = denoise(x_s, a * s)
        m_s = den_s if predict_x0 else (x_s - den_s) / s
        x = hand_dpmpp_step(x_s, s, t_next, m_s, history, order(2 * n + 2), predict_x0, scale=c)
        history.append((s, m_s))
    return x


@pytest.mark.parametrize("predict_x0", [True, False])
def test_dpm_solver_pp_plugin(predict_x0):
    r, c, a = 0.4, 0.99, 1.02
    got = run("amed_dpmpp", GRID, r=r, c=c, a=a, predict_x0=predict_x0, thresholding=False)
    assert got == pytest.approx(hand_amed_dpmpp(GRID, r, c, a, predict_x0), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------------- LMS


def test_lms_matches_k_diffusion_coefficients():
    """k-diffusion integrates each Lagrange basis polynomial over [sigma_i, sigma_{i+1}] with scipy."""
    grid = [*GRID, 0.0]
    x, ds = X0, []
    for i, (t, t_next) in enumerate(zip(grid, grid[1:])):
        ds.append((x - denoise(x, t)) / t)
        order = min(i + 1, 4)

        def basis(tau, j, i=i, order=order):
            return math.prod((tau - grid[i - k]) / (grid[i - j] - grid[i - k]) for k in range(order) if k != j)

        coeffs = [quad(basis, t, t_next, args=(j,), epsrel=1e-12)[0] for j in range(order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds[-order:])))
    assert run("lms", grid) == pytest.approx(x, rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "plugin,base,options",
    [
        ("amed_euler", "euler", {}),
        ("amed_ipndm", "ipndm", {}),
        ("amed_ipndm_uneven", "lms", {}),
        ("amed_dpmpp", "dpmpp3m", {"thresholding": False}),
    ],
)
@pytest.mark.parametrize("afs", [False, True])
def test_plugin_at_half_is_its_base_solver_on_the_refined_grid(plugin, base, options, afs):
    """With r = 1/2 and c = a = 1 each multistep/restarting plugin is its base solver run on t_0, s_0, t_1, ...
    with s_n the geometric midpoints: the plugin adds nothing but the learned placement."""
    refined = [p for t, t_next in zip(GRID, GRID[1:]) for p in (t, geometric(t, t_next, 0.5))] + [GRID[-1]]
    want = run(base, refined, afs=afs, **options)
    assert run(plugin, GRID, r=0.5, c=1.0, a=1.0, afs=afs, **options) == pytest.approx(want, rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------------- thresholding


def test_dynamic_threshold_on_a_hand_made_tensor():
    # sample 0: |values| 0, 0.01, ..., 2.00 (201 of them): the 0.995 quantile sits at position 199 exactly,
    # so s = 1.99; sample 1: everything inside [-1, 1], so s = max(q, 1) = 1 and nothing changes
    first = torch.linspace(0, 2, 201, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(101)[:201]
    second = torch.linspace(-0.9, 0.9, 201, dtype=torch.float64)
    d = torch.stack([first, second]).reshape(2, 1, 201, 1)
    out = dynamic_threshold(d)
    torch.testing.assert_close(out[1], d[1])
    torch.testing.assert_close(out[0], d[0].clamp(-1.99, 1.99) / 1.99)
    assert out[0].abs().max().item() == pytest.approx(1.0)
    # and between sort positions it interpolates linearly, as torch.quantile does
    g = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    q = torch.quantile(g.abs().reshape(3, -1), 0.995, dim=1).clamp(min=1).reshape(3, 1, 1, 1)
    torch.testing.assert_close(dynamic_threshold(g), g.clamp(-q, q) / q)


def test_thresholding_is_on_by_default_for_data_prediction():
    """diff-sampler's dpm_pp_sampler thresholds whenever it predicts x0; a D outside [-1, 1] shows it."""
    grid, mu = GRID, 1.6  # data outside [-1, 1]
    plain = run("dpmpp3m", grid, mu=mu, thresholding=False)
    assert plain == pytest.approx(hand_dpmpp(grid, [1, 2, 3, 2, 1], mu=mu), rel=1e-12)
    assert abs(run("dpmpp3m", grid, mu=mu) - plain) > 0.1
    hand_x, history = X0, []
    orders = [1, 2, 3, 2, 1]
    for n, (t, t_next) in enumerate(zip(grid, grid[1:])):
        den = denoise(hand_x, t, mu)
        bound = max(abs(den), 1.0)  # one element: the quantile of |D| is |D|
        m = max(-bound, min(bound, den)) / bound
        hand_x = hand_dpmpp_step(hand_x, t, t_next, m, history, orders[n], True)
        history.append((t, m))
    assert run("dpmpp3m", grid, mu=mu) == pytest.approx(hand_x, rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------------- options


def test_options_take_the_reference_defaults():
    assert SolverConfig("dpmpp3m").options() == {
        "max_order": 3,
        "predict_x0": True,
        "lower_order_final": True,
        "thresholding": True,
    }
    assert SolverConfig("dpmpp2m", predict_x0=False).options()["thresholding"] is False
    assert SolverConfig("amed_dpmpp").options()["max_order"] == 3
    assert SolverConfig("ipndm").max_order == SolverConfig("lms").max_order == 4
    assert SolverConfig("amed").options() == {} and SolverConfig("heun").max_order is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "dpm2", "max_order": 2}, "dpm2 takes no max_order"),
        ({"name": "ipndm", "thresholding": False}, "ipndm takes no thresholding"),
        ({"name": "dpmpp2m", "max_order": 3}, "1..2"),
        ({"name": "ipndm", "max_order": 5}, "1..4"),
        ({"name": "dpmpp3m", "predict_x0": False, "thresholding": True}, "data prediction"),
    ],
)
def test_options_a_solver_does_not_take_are_refused(kwargs, match):
    with pytest.raises(AmedError, match=match):
        SolverConfig(**kwargs)


def test_sampler_records_its_solver_options():
    cfg = SamplerConfig.create("dpmpp3m", 5, "polynomial", (0.002, 80.0), False, options={"predict_x0": False})
    assert cfg.solver_config.options() == {
        "max_order": 3,
        "predict_x0": False,
        "lower_order_final": True,
        "thresholding": False,
    }
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    plain = SamplerConfig.create("heun", 6, "polynomial", (0.002, 80.0), False)
    assert plain.to_dict()["max_order"] is None and SamplerConfig.from_dict(plain.to_dict()) == plain


@pytest.mark.parametrize("solver", ["amed_ipndm", "ipndm"])
def test_records_from_before_the_rename_keep_their_formula(solver):
    """A record written before the published plugin took the name amed_ipndm meant the uneven-grid one."""
    cfg = SamplerConfig.create(solver, 5, "time_uniform", (0.002, 80.0), True)
    old = SamplerConfig.from_dict(cfg.to_dict(), renamed=True)
    assert old.solver == {"amed_ipndm": "amed_ipndm_uneven"}.get(solver, solver)
    assert SamplerConfig.from_dict(cfg.to_dict()).solver == solver
    assert get_solver(old.solver).evals_per_interval == get_solver(solver).evals_per_interval


def test_schedules_ending_at_zero_are_the_solvers_business_only():
    """Schedules end at sigma_min > 0 (the AMED recipe); a 0 end is for callers passing their own grid."""
    assert make_schedule("polynomial", 4, 0.002, 80.0)[-1] == pytest.approx(0.002)
