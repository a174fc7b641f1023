"""The saturated test with systematic uncertainties (issue 16) against independent references.

References: pyhf 0.7.6 (numpy backend) for the interpolation codes and for the whole model
(histosys + normsys + staterror + a free normfactor), a scipy minimisation of the NLL written
out from the formula with every per-bin gamma free, and null replicas for the calibration of
the frequentist toys.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special, stats

from validator.stats.likelihood import saturated
from validator.stats.systematics import (
    SystModel,
    build_model,
    expected_counts,
    fit_batch,
    interp_code4,
    interp_code4p,
    q_unprofiled,
    saturated_syst,
)

pyhf = pytest.importorskip("pyhf")
# pyhf 0.7.6 validates its spec with jsonschema's deprecated RefResolver: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:jsonschema.RefResolver:DeprecationWarning")

ALPHAS = np.array([-2.7, -1.3, -1.0, -0.999, -0.6, -0.2, 0.0, 0.1, 0.5, 0.999, 1.0, 1.4, 3.0])

# A small two-process model: "sig" carries a shape systematic, "bkg" a normalisation one.
SIG = np.array([20.0, 45.0, 60.0, 40.0])
BKG = np.array([50.0, 35.0, 25.0, 15.0])
SIG_UP = np.array([26.0, 50.0, 58.0, 33.0])
SIG_DN = np.array([16.0, 41.0, 61.0, 45.0])
SIG_ERR = np.array([3.0, 4.0, 5.0, 4.0])
BKG_ERR = np.array([5.0, 3.0, 3.0, 2.5])
BKG_LO, BKG_HI = 0.85, 1.2
DATA = np.array([88.0, 71.0, 88.0, 70.0])


def _pyhf_model(with_stat: bool = True) -> pyhf.Model:
    stat_sig = [{"name": "stat", "type": "staterror", "data": SIG_ERR.tolist()}]
    stat_bkg = [{"name": "stat", "type": "staterror", "data": BKG_ERR.tolist()}]
    spec = {
        "channels": [
            {
                "name": "ch",
                "samples": [
                    {
                        "name": "sig",
                        "data": SIG.tolist(),
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            {"name": "jes", "type": "histosys",
                             "data": {"hi_data": SIG_UP.tolist(), "lo_data": SIG_DN.tolist()}},
                            *(stat_sig if with_stat else []),
                        ],
                    },
                    {
                        "name": "bkg",
                        "data": BKG.tolist(),
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            {"name": "bkgnorm", "type": "normsys",
                             "data": {"hi": BKG_HI, "lo": BKG_LO}},
                            *(stat_bkg if with_stat else []),
                        ],
                    },
                ],
            }
        ]
    }
    return pyhf.Model(spec, poi_name="mu")


def _our_model(with_stat: bool = True) -> SystModel:
    return build_model(
        np.stack([SIG, BKG]),
        np.stack([SIG_ERR**2, BKG_ERR**2]),
        {"jes": (np.stack([SIG_UP, BKG]), np.stack([SIG_DN, BKG]))},
        {"bkg": (BKG_LO, BKG_HI)},
        process_names=["sig", "bkg"],
        mc_stat=with_stat,
    )


def _pyhf_pars(model: pyhf.Model, mu: float, jes: float, norm: float,
               gamma: np.ndarray | None) -> np.ndarray:
    pars = np.asarray(model.config.suggested_init(), dtype=float)
    pars[model.config.par_slice("mu")] = mu
    pars[model.config.par_slice("jes")] = jes
    pars[model.config.par_slice("bkgnorm")] = norm
    if gamma is not None:
        pars[model.config.par_slice("stat")] = gamma
    return pars


def _pyhf_twice_nll(model: pyhf.Model, pars: np.ndarray) -> float:
    data = np.concatenate([DATA, model.config.auxdata])
    return float(-2.0 * model.logpdf(pars, data)[0])


def _pyhf_fit(model: pyhf.Model) -> np.ndarray:
    """Best fit of pyhf's own likelihood, minimised by scipy to machine precision."""
    init = np.asarray(model.config.suggested_init(), dtype=float)
    res = optimize.minimize(lambda p: _pyhf_twice_nll(model, p), init, method="BFGS",
                            options={"gtol": 1e-9, "maxiter": 10_000})
    # a second BFGS from the first optimum (fresh Hessian estimate) polishes the last digits
    res = optimize.minimize(lambda p: _pyhf_twice_nll(model, p), res.x, method="BFGS",
                            options={"gtol": 1e-10, "maxiter": 10_000})
    return res.x


# ---------------------------------------------------------------------------------------
# interpolation codes against pyhf
# ---------------------------------------------------------------------------------------


def test_code4p_matches_pyhf_inside_and_outside_one_sigma() -> None:
    nom, up, down = np.array([10.0, 20.0, 5.0]), np.array([13.0, 18.0, 5.5]), \
        np.array([8.0, 23.0, 4.0])
    ref = pyhf.interpolators.code4p([[[down.tolist(), nom.tolist(), up.tolist()]]])
    expected = np.asarray(ref(np.array([ALPHAS])))[0, 0]  # (alpha, bins)
    delta, _, _ = interp_code4p(ALPHAS, nom, up, down)
    np.testing.assert_allclose(delta, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(interp_code4p(1.0, nom, up, down)[0], up - nom)
    np.testing.assert_allclose(interp_code4p(-1.0, nom, up, down)[0], down - nom)


def test_code4_matches_pyhf_inside_and_outside_one_sigma() -> None:
    lo, hi = np.array([0.9, 0.8, 1.02]), np.array([1.15, 1.1, 1.05])  # the last: same side
    nom = np.ones(3)
    ref = pyhf.interpolators.code4([[[lo.tolist(), nom.tolist(), hi.tolist()]]])
    expected = np.asarray(ref(np.array([ALPHAS])))[0, 0]
    factor, _, _ = interp_code4(ALPHAS, lo, hi)
    np.testing.assert_allclose(factor, expected, rtol=1e-12)
    np.testing.assert_allclose(interp_code4(1.0, lo, hi)[0], hi)
    np.testing.assert_allclose(interp_code4(-1.0, lo, hi)[0], lo)


@pytest.mark.parametrize("which", ["code4p", "code4"])
def test_interpolation_derivatives_match_finite_differences(which: str) -> None:
    eps = 1e-6
    a = ALPHAS[np.abs(np.abs(ALPHAS) - 1.0) > 1e-2]  # away from the joins at +-1

    def f(alpha: np.ndarray) -> tuple[np.ndarray, ...]:
        if which == "code4p":
            return interp_code4p(alpha, np.array([10.0, 4.0]), np.array([13.0, 3.0]),
                                 np.array([8.0, 6.0]))
        return interp_code4(alpha, np.array([0.9, 0.7]), np.array([1.15, 1.2]))

    _, d1, d2 = f(a)
    np.testing.assert_allclose(d1, (f(a + eps)[0] - f(a - eps)[0]) / (2 * eps), atol=1e-6)
    np.testing.assert_allclose(d2, (f(a + eps)[1] - f(a - eps)[1]) / (2 * eps), atol=1e-5)
    # smooth at the joins: value, first and second derivatives continuous at +-1
    for edge in (-1.0, 1.0):
        lo_, hi_ = f(np.array([edge - 1e-9])), f(np.array([edge + 1e-9]))
        for k in range(3):
            np.testing.assert_allclose(lo_[k], hi_[k], atol=1e-6)


# ---------------------------------------------------------------------------------------
# the whole model against pyhf
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_stat", [True, False])
def test_best_fit_matches_pyhf(with_stat: bool) -> None:
    ref_model = _pyhf_model(with_stat)
    ref = _pyhf_fit(ref_model)
    ours = _our_model(with_stat)
    fit = fit_batch(ours, DATA[None], hessian=True)
    assert fit.converged[0]
    mu, jes, norm = np.exp(fit.x[0, 0]), fit.x[0, 1], fit.x[0, 2]
    assert mu == pytest.approx(ref[ref_model.config.par_slice("mu")][0], abs=1e-5)
    assert jes == pytest.approx(ref[ref_model.config.par_slice("jes")][0], abs=1e-4)
    assert norm == pytest.approx(ref[ref_model.config.par_slice("bkgnorm")][0], abs=1e-4)
    gamma = fit.gamma[0] if with_stat else None
    if with_stat:
        np.testing.assert_allclose(gamma, ref[ref_model.config.par_slice("stat")], atol=1e-5)

    # NLL differences between the best fit and a fixed point (nominal, mu = 1, gammas = 1)
    best_ref = _pyhf_twice_nll(ref_model, ref)
    fixed = _pyhf_pars(ref_model, 1.0, 0.0, 0.0, np.ones(4) if with_stat else None)
    fixed_ref = _pyhf_twice_nll(ref_model, fixed)
    fixed_ours = float(q_unprofiled(ours, DATA[None], [[0.0, 0.0, 0.0]], np.ones((1, 4)))[0])
    assert fixed_ours - fit.q[0] == pytest.approx(fixed_ref - best_ref, abs=1e-6)
    # and absolutely: pyhf's -2 ln L minus q is the saturated model's -2 ln L (Poisson at
    # nu = n) plus the normalisation constants of the unit Gaussians and of the staterror ones
    sat = -2.0 * np.sum(DATA * np.log(DATA) - DATA - special.gammaln(DATA + 1.0))
    n_gauss = 2 + (4 if with_stat else 0)
    const = sat + n_gauss * np.log(2 * np.pi)
    if with_stat:
        const += 2.0 * np.sum(np.log(ours.sigma_rel))
    assert fit.q[0] == pytest.approx(best_ref - const, abs=1e-6)
    # at our best fit, pyhf's likelihood is at its minimum too
    ours_in_pyhf = _pyhf_pars(ref_model, mu, jes, norm, gamma)
    assert _pyhf_twice_nll(ref_model, ours_in_pyhf) <= best_ref + 1e-8


def test_postfit_uncertainties_match_the_hessian_of_pyhfs_likelihood() -> None:
    """Errors from the inverse of pyhf's full Hessian (gammas included), by finite differences.

    Our errors come from the analytic Hessian of the gamma-profiled q; the Schur complement
    makes its inverse the (mu, theta, eta) block of the full inverse. (Minuit's numerical HESSE
    on pyhf's NLL agrees to 0.5% only: its step sizes, not the model, limit it.)
    """
    ref_model = _pyhf_model(True)
    ref = _pyhf_fit(ref_model)
    dim, h = ref.size, 1e-4
    hess = np.zeros((dim, dim))
    for i in range(dim):
        for j in range(dim):
            e_i, e_j = np.eye(dim)[i] * h, np.eye(dim)[j] * h
            hess[i, j] = sum(
                sign * _pyhf_twice_nll(ref_model, ref + si * e_i + sj * e_j)
                for sign, si, sj in ((1, 1, 1), (-1, 1, -1), (-1, -1, 1), (1, -1, -1))
            ) / (4 * h * h)
    errors = np.sqrt(np.diag(2.0 * np.linalg.inv(hess)))
    res = saturated_syst(DATA, np.stack([SIG, BKG]), np.stack([SIG_ERR**2, BKG_ERR**2]),
                         variations={"jes": (np.stack([SIG_UP, BKG]), np.stack([SIG_DN, BKG]))},
                         norm_uncertainties={"bkg": (BKG_LO, BKG_HI)},
                         process_names=["sig", "bkg"], n_toys=0)
    nuis = res.details["nuisances"]
    cfg = ref_model.config
    assert nuis["jes"]["error"] == pytest.approx(errors[cfg.par_slice("jes")][0], rel=1e-4)
    assert nuis["bkg"]["error"] == pytest.approx(errors[cfg.par_slice("bkgnorm")][0], rel=1e-4)
    assert res.details["mu_err"] == pytest.approx(errors[cfg.par_slice("mu")][0], rel=1e-4)
    assert nuis["jes"]["pull"] == nuis["jes"]["value"]
    assert nuis["jes"]["kind"] == "shape" and nuis["bkg"]["kind"] == "norm"


# ---------------------------------------------------------------------------------------
# BB-lite against an explicit minimisation of the written-out NLL
# ---------------------------------------------------------------------------------------


def test_bb_lite_matches_scipy_minimisation_of_the_written_out_nll() -> None:
    w = np.array([30.0, 80.0, 120.0, 90.0, 40.0, 12.0])
    s2 = np.array([30.0, 60.0, 200.0, 90.0, 80.0, 30.0])
    up = w * np.array([1.10, 1.05, 1.0, 0.97, 0.93, 0.9])
    down = w * np.array([0.92, 0.97, 1.0, 1.04, 1.05, 1.12])
    n = np.array([40.0, 95.0, 118.0, 70.0, 28.0, 6.0])
    sigma = np.sqrt(s2) / w

    def delta(t: float) -> np.ndarray:  # code4p, written out from the formula
        d_up, d_dn = up - w, w - down
        if t > 1:
            return t * d_up
        if t < -1:
            return t * d_dn
        s, a = 0.5 * (d_up + d_dn), (d_up - d_dn) / 16.0
        return t * s + t * t * a * (15 - 10 * t * t + 3 * t**4)

    def q(p: np.ndarray) -> float:
        mu, t, g = p[0], p[1], p[2:]
        nu = mu * g * (w + delta(t))
        return float(np.sum(2 * (nu - n + n * np.log(n / nu))) + np.sum((g - 1) ** 2 / sigma**2)
                     + t * t)

    start = np.concatenate([[n.sum() / w.sum(), 0.0], np.ones(w.size)])
    ref = optimize.minimize(q, start, method="L-BFGS-B",
                            bounds=[(1e-3, None), (-5, 5)] + [(1e-3, None)] * w.size,
                            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 20_000})
    ref = optimize.minimize(q, ref.x, method="BFGS", options={"gtol": 1e-10})
    res = saturated_syst(n, w, s2, variations={"shape": (up, down)}, n_toys=0)
    assert res.statistic == pytest.approx(ref.fun, abs=1e-7)
    assert res.details["mu_hat"] == pytest.approx(ref.x[0], rel=1e-5)
    assert res.details["nuisances"]["shape"]["value"] == pytest.approx(ref.x[1], abs=1e-4)
    model = build_model(w, s2, {"shape": (up, down)})
    fit = fit_batch(model, n[None])
    np.testing.assert_allclose(fit.gamma[0], ref.x[2:], atol=1e-5)


def test_without_systematics_equals_saturated() -> None:
    rng = np.random.default_rng(4)
    w = rng.uniform(50, 500, 12)
    s2 = w * rng.uniform(0.2, 3.0, 12)
    n = rng.poisson(0.3 * w).astype(float)
    ref = saturated(n, w, s2)
    res = saturated_syst(n, w, s2, n_toys=0)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert res.details["mu_hat"] == pytest.approx(ref.details["mu_hat"], rel=1e-9)
    assert res.effect_size == ref.effect_size and res.ndf == ref.ndf
    np.testing.assert_allclose(res.residuals, ref.residuals, atol=1e-6)


def test_one_sided_variation_is_mirrored() -> None:
    w = np.array([100.0, 200.0, 150.0, 80.0])
    up = w * np.array([1.1, 1.0, 0.95, 0.9])
    n = np.array([115.0, 190.0, 140.0, 70.0])
    one = saturated_syst(n, w, w, variations={"s": (up, None)}, n_toys=0)
    two = saturated_syst(n, w, w, variations={"s": (up, 2 * w - up)}, n_toys=0)
    assert one.statistic == pytest.approx(two.statistic, rel=1e-12)


def test_normalisation_of_the_only_process_is_absorbed_by_the_free_mu() -> None:
    w = np.array([100.0, 200.0, 150.0, 80.0])
    n = np.array([115.0, 190.0, 140.0, 70.0])
    plain = saturated_syst(n, w, w, n_toys=0)
    normed = saturated_syst(n, w, w, norm_uncertainties={"process0": 0.1}, n_toys=0)
    assert normed.statistic == pytest.approx(plain.statistic, abs=1e-9)
    assert normed.details["nuisances"]["process0"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_process_normalisation_changes_the_shape() -> None:
    sig, bkg = np.array([10.0, 40.0, 80.0, 40.0]), np.array([80.0, 40.0, 10.0, 5.0])
    n = np.array([130.0, 95.0, 92.0, 47.0])  # more bkg-like than predicted
    without = saturated_syst(n, np.stack([sig, bkg]), np.stack([sig, bkg]) * 0.01, n_toys=0,
                             process_names=["sig", "bkg"])
    with_norm = saturated_syst(n, np.stack([sig, bkg]), np.stack([sig, bkg]) * 0.01, n_toys=0,
                               process_names=["sig", "bkg"],
                               norm_uncertainties={"bkg": 0.3})
    assert with_norm.statistic < without.statistic
    assert with_norm.details["nuisances"]["bkg"]["value"] > 0.3


def test_double_well_is_found_and_flagged() -> None:
    """A template with up and down on the same side of the nominal makes two minima.

    The bin-0 effect of code4p is then even in theta (a double well at theta = +-1), bin 2
    picks a side. Started at the other well, Newton stays there; the multistart of the test
    finds the lower one, checked against a dense grid of the written-out q (no MC stat, so no
    gamma to profile) polished by Nelder-Mead.
    """
    w = np.full(4, 1000.0)
    up, down = np.array([1300.0, 1000, 800, 1000]), np.array([1300.0, 1000, 1200, 1000])
    n = np.array([625.0, 500, 460, 500])
    model = build_model(w, np.zeros(4), {"s": (up, down)})
    local = fit_batch(model, n[None], start=[[np.log(0.5), -1.0]])
    res = saturated_syst(n, w, np.zeros(4), variations={"s": (up, down)}, n_toys=0)
    assert res.details["multimodal"] is True
    assert res.statistic < local.q[0] - 1.0

    def q(p: np.ndarray) -> float:
        return float(q_unprofiled(model, n[None], p[None], np.ones((1, 4)))[0])

    uu, tt = np.meshgrid(np.linspace(np.log(0.3), np.log(0.8), 101), np.linspace(-3, 3, 241))
    grid = np.array([q(np.array([u, t])) for u, t in zip(uu.ravel(), tt.ravel(), strict=True)])
    k = int(np.argmin(grid))
    ref = optimize.minimize(q, [uu.ravel()[k], tt.ravel()[k]], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-12})
    assert res.statistic == pytest.approx(ref.fun, abs=1e-7)
    assert res.details["nuisances"]["s"]["value"] == pytest.approx(ref.x[1], abs=1e-4)


def test_bad_inputs_are_refused() -> None:
    w = np.array([10.0, 20.0, 30.0])
    with pytest.raises(ValueError, match="shape"):
        saturated_syst([1, 2], w, w, n_toys=0)
    with pytest.raises(ValueError, match="unknown process"):
        saturated_syst([1, 2, 3], w, w, norm_uncertainties={"ttbar": 0.1}, n_toys=0)
    with pytest.raises(ValueError, match="merge sparse bins"):
        saturated_syst([1, 2, 3], [10.0, -1.0, 30.0], w, n_toys=0)
    with pytest.raises(ValueError, match="variation"):
        saturated_syst([1, 2, 3], w, w, variations={"s": ([1.0, 2.0], None)}, n_toys=0)
    with pytest.raises(ValueError, match="empty"):
        saturated_syst([0, 0, 0], w, w, n_toys=0)
    with pytest.raises(ValueError, match="variation"):  # 3 process rows for 2 processes
        saturated_syst([1, 2, 3], np.stack([w, w]), np.stack([w, w]),
                       variations={"s": (np.stack([w, w, w]), None)}, n_toys=0)
    with pytest.raises(ValueError, match="rng"):
        saturated_syst([1, 2, 3], w, w, n_toys=10)


# ---------------------------------------------------------------------------------------
# toys: planted case, bounds, determinism, calibration under the null
# ---------------------------------------------------------------------------------------


def _tilt_case(n_bins: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.linspace(-1.0, 1.0, n_bins)
    w = 5_000.0 * np.exp(-0.5 * x**2) * 4.0  # simulation 4x the data, weight 4 per event
    s2 = 4.0 * w
    up, down = w * (1.0 + 0.08 * x), w * (1.0 - 0.08 * x)
    return w, s2, up, down


def test_planted_shift_covered_by_a_systematic_passes_with_it_and_fails_without() -> None:
    w, s2, up, down = _tilt_case()
    truth = 0.25 * (w + interp_code4p(1.5, w, up, down)[0])  # the tilt at 1.5 sigma
    n = np.random.default_rng(7).poisson(truth).astype(float)
    plain = saturated(n, w, s2)
    assert plain.pvalue < 1e-4
    no_syst = saturated_syst(n, w, s2, rng=np.random.default_rng(1))
    assert no_syst.details["n_toys_reaching"] == 0 and no_syst.pvalue < 1 / 301
    with_syst = saturated_syst(n, w, s2, variations={"tilt": (up, down)},
                               rng=np.random.default_rng(1))
    assert with_syst.pvalue > 0.05 and with_syst.pvalue_method == "toys"
    assert with_syst.n_toys == 300 and with_syst.method == "saturated_syst"
    pull = with_syst.details["nuisances"]["tilt"]
    assert pull["value"] == pytest.approx(1.5, abs=3 * pull["error"])
    assert 0.0 < pull["error"] < 1.0


def test_toys_are_deterministic_and_adaptive() -> None:
    w, s2, up, down = _tilt_case(10)
    n = np.random.default_rng(3).poisson(0.25 * w * (1 + 0.05 * np.linspace(-1, 1, 10)))
    args = (n, w, s2)
    tilt = {"tilt": (up, down)}
    a = saturated_syst(*args, variations=tilt, rng=np.random.default_rng(5))
    b = saturated_syst(*args, variations=tilt, rng=np.random.default_rng(5))
    assert a.pvalue == b.pvalue and a.statistic == b.statistic
    # a p-value near the threshold asks for more toys (up to max_toys)
    c = saturated_syst(*args, variations=tilt, rng=np.random.default_rng(5), max_toys=2400,
                       thresholds=(a.pvalue,))
    assert c.n_toys > 300 and c.details["toys_stop"] in ("settled", "max_toys")


def _null_pvalues(n_rep: int, seed: int) -> np.ndarray:
    """Toy p-values of replicas drawn from the model with nuisances from their constraints."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 1.0, 12)
    sig = 300.0 * np.exp(-2.0 * x**2)
    bkg = 200.0 * np.exp(-0.8 * (x + 1.0))
    sig_s2 = sig * 0.5  # simulation 2x the data in events
    bkg_s2 = bkg * 0.5
    w, s2 = np.stack([sig, bkg]), np.stack([sig_s2, bkg_s2])
    up = np.stack([sig * (1 + 0.1 * x), bkg])
    down = np.stack([sig * (1 - 0.06 * x), bkg])
    tot_up = (sig + bkg) * (1 + 0.04 * x**2)
    variations = {"shape": (up, down), "curv": (tot_up, None)}
    norms = {"bkg": 0.15}
    model = build_model(w, s2, variations, norms, process_names=["sig", "bkg"])
    out = np.empty(n_rep)
    for r in range(n_rep):
        theta = rng.standard_normal(model.n_constrained)
        gamma = 1.0 + model.sigma_rel * rng.standard_normal(model.n_bins)
        nu = np.clip(gamma, 0.0, None) * _expected(model, theta)
        n = rng.poisson(nu).astype(float)
        out[r] = saturated_syst(n, w, s2, variations=variations, norm_uncertainties=norms,
                                process_names=["sig", "bkg"],
                                rng=rng).pvalue
    return out


def _expected(model: SystModel, theta: np.ndarray) -> np.ndarray:
    """Expected counts at mu = 1, the gammas at 1, the nuisances at ``theta``."""
    return expected_counts(model, np.concatenate([[0.0], theta])[None])[0]


def _assert_uniform(p: np.ndarray) -> None:
    assert stats.kstest(p, "uniform").pvalue > 0.01
    for alpha in (0.05, 0.1):
        lo, hi = stats.binom.interval(0.999, p.size, alpha)
        assert lo <= np.sum(p <= alpha) <= hi


def test_toy_pvalues_are_uniform_under_the_null() -> None:
    """200 replicas (about 8 s): KS and the tails at 0.05 and 0.1.

    Measured over 1000 replicas (seeds 5-8, 250 each): fractions below 0.01 / 0.05 / 0.1 /
    0.5 of 0.009 / 0.043 / 0.091 / 0.508, KS p = 0.68.
    """
    _assert_uniform(_null_pvalues(200, 12))


@pytest.mark.slow
def test_toy_pvalues_are_uniform_under_the_null_1000_replicas() -> None:
    p = _null_pvalues(1000, 5)
    _assert_uniform(p)
    lo, hi = stats.binom.interval(0.999, p.size, 0.01)
    assert lo <= np.sum(p <= 0.01) <= hi


# ---------------------------------------------------------------------------------------
# the compiled Newton fits against the batched numpy reference
# ---------------------------------------------------------------------------------------


def _toy_problems(model: SystModel, n_obs: np.ndarray, size: int, seed: int,
                  spread: float = 1.0) -> tuple[np.ndarray, ...]:
    """Toys of ``saturated_syst``'s kind around ``n_obs``: Poisson counts, global
    observables drawn around their centres, starts at the fit to ``n_obs``, some far off."""
    rng = np.random.default_rng(seed)
    fit = fit_batch(model, n_obs[None], multistart=True)
    nu = fit.nu[0]
    n = rng.poisson(nu, size=(size, nu.size)).astype(float)
    centre = fit.x[0, 1:] + rng.standard_normal((size, model.n_constrained))
    aux = fit.gamma[0] + model.sigma_rel * rng.standard_normal((size, nu.size))
    start = np.repeat(fit.x, size, axis=0)
    start[: size // 4, 1:] += spread * rng.standard_normal((size // 4, model.n_constrained))
    start[: size // 8, 0] += 0.5  # mu far off: damped steps and backtracking
    return n, aux, centre, start


@pytest.mark.parametrize("case", ["two_processes", "two_processes_no_stat", "one_process_100",
                                  "double_well", "total_template"])
def test_compiled_newton_fits_match_numpy(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled fits (one at a time) reach the minima of the batched numpy loop: the
    statistic to 1e-9 relative, the parameters to 1e-6, the same fits converged."""
    from validator.stats import systematics as syst

    if not syst.HAVE_NUMBA:
        pytest.skip("numba not available")
    rng = np.random.default_rng(5)
    if case.startswith("two_processes"):
        model = _our_model(with_stat=case == "two_processes")
        n_obs = DATA
    elif case == "one_process_100":
        nom = rng.uniform(5e3, 5e4, 100)
        x = np.linspace(-1, 1, 100)
        model = build_model(nom, 1.3 * nom, {
            "scale": (nom * (1 + 0.03 * x), nom * (1 - 0.03 * x)),
            "pdf": (nom * (1 + 0.01 * x**2), nom * (1 - 0.012 * x**2))})
        n_obs = rng.poisson(1.19 * nom * (1 + 0.01 * x)).astype(float)
    elif case == "double_well":
        w = np.full(4, 1000.0)
        model = build_model(w, 10.0 * w, {"s": (np.array([1300.0, 1000, 800, 1000]),
                                                np.array([1300.0, 1000, 1200, 1000]))})
        n_obs = np.array([625.0, 500, 460, 500])
    else:
        sig, bkg = np.array([10.0, 40.0, 80.0, 40.0]), np.array([80.0, 40.0, 10.0, 5.0])
        tot = sig + bkg
        model = build_model(np.stack([sig, bkg]), np.stack([sig, bkg]),
                            {"shape": (tot * np.array([1.1, 1.0, 0.95, 0.9]), None)},
                            {"bkg": 0.2}, process_names=["sig", "bkg"])
        n_obs = np.array([100.0, 85.0, 88.0, 40.0])
    n, aux, centre, start = _toy_problems(model, n_obs, 400, seed=7)
    compiled = fit_batch(model, n, centre=centre, aux=aux, start=start)
    monkeypatch.setattr(syst, "HAVE_NUMBA", False)
    batched = fit_batch(model, n, centre=centre, aux=aux, start=start)
    np.testing.assert_array_equal(compiled.converged, batched.converged)
    assert compiled.converged.mean() > 0.95
    same = compiled.converged.copy()
    if case == "double_well":  # a start between the wells may fall into either of them
        same &= np.abs(compiled.x[:, 1] - batched.x[:, 1]) < 1e-3
        assert same.mean() > 0.9
    np.testing.assert_allclose(compiled.q[same], batched.q[same], rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(compiled.x[same], batched.x[same], atol=1e-6)
