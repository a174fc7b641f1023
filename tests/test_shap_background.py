"""SHAP's background from a weighted simulation: rows drawn by |w| with their signs kept give
the weighted expectation E_w[f] as the base value (the one efficiency refers to), and the
background draw's uncertainty is part of the stored one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model import save_ts

from validator.model import load_model
from validator.model.shap_values import shap_importance

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


class Linearish(torch.nn.Module):
    def forward(self, x):
        return x[:, 0] + 0.3 * torch.tanh(x[:, 1] * x[:, 2])


@pytest.fixture
def planted(tmp_path):
    """A simulation whose negative weights sit where f is large: E_w[f] is far from the
    unweighted mean and from the |w|-weighted one."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (20_000, 3))
    w = rng.gamma(4.0, 0.25, len(x))
    w[(x[:, 0] > 0.8) & (rng.random(len(x)) < 0.5)] *= -1.0  # NLO-like negative weights
    model = load_model(str(save_ts(Linearish(), tmp_path / "m.pt",
                                   {"inputs": ["a", "b", "c"]})))
    f = model.evaluate(x)[:, 0]
    return model, x, w, f


@pytest.mark.parametrize("method", ["exact", "sampling", "auto"])
def test_signed_background_gives_the_weighted_expectation(planted, method):
    model, x, w, f = planted
    expected = float(np.sum(w * f) / np.sum(w))
    unweighted, absolute = float(f.mean()), float(np.sum(np.abs(w) * f) / np.abs(w).sum())
    assert min(abs(expected - unweighted), abs(expected - absolute)) > 0.3  # it matters
    n_bg = 3_000
    res = shap_importance(model, x[:30], w[:30], background=x, background_weights=w,
                          n_background=n_bg, method=method, seed=1)
    assert res.background_weighted and res.n_background == n_bg
    # shap's kernel explainer takes no signed rows: auto enumerates instead at 3 inputs
    assert res.explainer != "KernelExplainer"
    # the ratio estimator's spread with these rows: a few hundredths
    assert res.base_values[0] == pytest.approx(expected, abs=0.05)
    # efficiency: sum of phi + E_w[f] = f(x), to float rounding
    assert res.additivity_error < 1e-5
    unsigned = shap_importance(model, x[:30], w[:30], background=x, n_background=n_bg,
                               method=method, seed=1)
    assert abs(unsigned.base_values[0] - expected) > 0.25  # the old draw misses it


def test_the_background_draw_is_in_the_stored_uncertainty(planted):
    model, x, w, _ = planted
    res = shap_importance(model, x[:200], w[:200], background=x, background_weights=w,
                          n_background=50, method="sampling", seed=2)
    assert res.background_groups == 5
    assert (res.background_uncertainties > 0).all()
    assert np.allclose(res.uncertainties, np.hypot(res.event_uncertainties,
                                                   res.background_uncertainties))
    # the spread over independent background draws is what the jackknife estimates (within
    # a factor: 30 draws, a jackknife of 5 groups)
    values = np.array([shap_importance(model, x[:200], w[:200], background=x,
                                       background_weights=w, n_background=50,
                                       method="sampling", seed=100 + k).values[0]
                       for k in range(30)])
    spread = values.std(axis=0, ddof=1)
    ratio = res.background_uncertainties[0] / spread
    assert (ratio > 0.3).all() and (ratio < 3.0).all(), ratio
    row = res.rows()[0]
    assert row["uncertainty_background"] == pytest.approx(res.background_uncertainties[0, 0])
