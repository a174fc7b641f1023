"""Test of a pair's dependence structure, insensitive to its marginals.

The simulated 2D table is first raked to the data's two marginals by iterative proportional
fitting (W. E. Deming and F. F. Stephan, "On a least squares adjustment of a sampled frequency
table when the expected marginal totals are known", Ann. Math. Statist. 11 (1940) 427). IPF
keeps every odds ratio of the table (Y. M. M. Bishop, S. E. Fienberg and P. W. Holland,
"Discrete Multivariate Analysis", MIT Press 1975), so after the adjustment data and
simulation differ only where the dependence (the copula) differs; a mismodelled marginal is
left to the 1D tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from validator.stats import compiled
from validator.stats.binned import (
    SimToyLaw,
    merge_histogram_rows,
    merge_sparse_bins,
    merge_sparse_bins_batched,
    optional_sums,
)
from validator.stats.dependence_kernel import dependence_toys
from validator.stats.poisson_toys import poisson_toys
from validator.stats.result import GofResult
from validator.stats.toys import ToyOptions, check_toy_options, chi2_tail_law, run_toys

__all__ = ["DEPENDENCE_MIN_SIM_ENTRIES", "dependence", "ipf"]

_TINY = 1e-300
#: Default minimum equivalent simulated entries of a merged cell group: 10 (ROOT's figure for
#: near-constant weights), not the 25 of :data:`validator.stats.binned.MIN_SIM_ENTRIES`: the
#: toys regroup their own cells, so the p-value stays calibrated and 10 keeps more cells.
#: Measured FPR at 5% (compound-Poisson toys, cells regrouped per toy; 10 x 10 tables, 300
#: p-values each) for no / 10 / 25 entries: rare x1000 importance weights on a hidden
#: variable, Kish size 0.3 x data: 0.007 / 0.003 / 0.010; NLO-like weights, same: 0.060 /
#: 0.033 / 0.030; importance weights on a binned variable: 0.033 / 0.050 / 0.050;
#: ``tests/null_weightings.py`` at 2000 data events: importance 0.037 / 0.047 / 0.043,
#: ht_slices 0.047 / 0.033 / 0.057, nlo 0.053 / 0.053 / 0.070, small_sim 0.053 / 0.037 /
#: 0.023, plain 0.030 / 0.030 / 0.027; unweighted sparse table
#: (``tests/test_calibration_binned.py``) 0.032 / 0.060 / -. Merging removes the null cases
#: where a cell with almost no simulation drives the statistic (e.g. small_sim, 10 000 data
#: events, ht x jet1_pt: asymptotic p = 6e-15, toy p = 0.006 without merging; 0.17 with).
DEPENDENCE_MIN_SIM_ENTRIES = 10.0
#: Pseudo-content per cell, relative to the mean cell, used only when a sparse simulated
#: table cannot otherwise be raked to the data's marginals.
PSEUDO_CONTENT = 0.01


def _fill_empty_cells(w: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, int]:
    """Variance of one event of mean weight for cells without simulated events (batched)."""
    tot_w = np.clip(w, 0.0, None).sum(axis=(-2, -1), keepdims=True)
    tot_s2 = s2.sum(axis=(-2, -1), keepdims=True)
    empty = (w == 0) & (s2 == 0) & (tot_w > 0) & (tot_s2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(empty, tot_s2 / tot_w, s2), int(empty.sum())


def _ipf_batched(
    table: np.ndarray,
    row_targets: np.ndarray,
    col_targets: np.ndarray,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """IPF on tables of shape ``(..., nx, ny)``; returns table, row and column factors.

    Rows or columns of the table that are entirely zero keep factor 1 (they cannot be raked);
    the caller decides what that means. Only the tables not yet converged are iterated, so a
    few hard ones (structural zeros that make the targets unreachable) cost little; their
    factors may run off to 0 or infinity. Returns the per-table convergence flags (shape
    ``table.shape[:-2]``) and the largest number of sweeps used.
    """
    batch = table.shape[:-2]
    nx, ny = table.shape[-2:]
    t = table.reshape(-1, nx, ny)
    rt = row_targets.reshape(-1, nx)
    ct = col_targets.reshape(-1, ny)
    r = np.ones((t.shape[0], nx))
    c = np.ones((t.shape[0], ny))
    total = np.maximum(rt.sum(axis=-1), _TINY)[:, None]
    converged = np.zeros(t.shape[0], dtype=bool)
    active = np.arange(t.shape[0])
    it = 0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
            ta, ra, ca = t[active], r[active], c[active]
            rows = np.einsum("aij,ai,aj->ai", ta, ra, ca)
            ra = ra * np.where(rows > 0, rt[active] / np.where(rows > 0, rows, 1.0), 1.0)
            cols = np.einsum("aij,ai,aj->aj", ta, ra, ca)
            ca = ca * np.where(cols > 0, ct[active] / np.where(cols > 0, cols, 1.0), 1.0)
            rows = np.einsum("aij,ai,aj->ai", ta, ra, ca)
            r[active], c[active] = ra, ca
            dev = np.max(np.abs(rows - rt[active]) / total[active], axis=1)
            done = dev < tol
            converged[active[done]] = True
            active = active[~done]
            if active.size == 0:
                break
        adjusted = t * r[:, :, None] * c[:, None, :]
    return (
        adjusted.reshape(table.shape),
        r.reshape((*batch, nx)),
        c.reshape((*batch, ny)),
        converged.reshape(batch),
        it,
    )


def ipf(
    table: ArrayLike,
    row_targets: ArrayLike,
    col_targets: ArrayLike,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> np.ndarray:
    r"""Rake a non-negative table to given row and column sums (iterative proportional fitting).

    Alternately scales the rows and the columns, :math:`t_{ij} \leftarrow t_{ij}\,R_i/t_{i+}`,
    :math:`t_{ij} \leftarrow t_{ij}\,C_j/t_{+j}` (Deming & Stephan, Ann. Math. Statist. 11
    (1940) 427). The result has the form :math:`r_i c_j t_{ij}`, so all odds ratios
    :math:`t_{ij}t_{kl}/(t_{il}t_{kj})` of the input are kept; it is the table closest to the
    input in Kullback-Leibler divergence with the given marginals (I. Csiszár, Ann. Probab.
    3 (1975) 146).

    Parameters
    ----------
    table:
        Non-negative table, shape ``(nx, ny)`` or batched ``(..., nx, ny)``.
    row_targets:
        Wanted row sums, shape ``(..., nx)``.
    col_targets:
        Wanted column sums, shape ``(..., ny)``; same total as ``row_targets``.
    max_iter:
        Maximum number of row-and-column sweeps.
    tol:
        Convergence when every row sum is within ``tol`` × total of its target (the column
        sums are exact after each sweep).

    Returns
    -------
    numpy.ndarray
        The adjusted table.

    Raises
    ------
    ValueError
        On negative input, totals that differ, a zero row or column with a positive target, or
        no convergence within ``max_iter`` sweeps.
    """
    t = np.asarray(table, dtype=float)
    rt = np.asarray(row_targets, dtype=float)
    ct = np.asarray(col_targets, dtype=float)
    if t.ndim < 2 or rt.shape != t.shape[:-1] or ct.shape != t.shape[:-2] + t.shape[-1:]:
        raise ValueError(f"shapes do not fit: table {t.shape}, rows {rt.shape}, cols {ct.shape}")
    if np.any(t < 0) or np.any(rt < 0) or np.any(ct < 0):
        raise ValueError("table and targets must be non-negative")
    tot_r, tot_c = rt.sum(axis=-1), ct.sum(axis=-1)
    if np.any(np.abs(tot_r - tot_c) > 1e-9 * np.maximum(np.abs(tot_r), 1.0)):
        raise ValueError("row and column targets have different totals")
    if np.any((t.sum(axis=-1) == 0) & (rt > 0)) or np.any((t.sum(axis=-2) == 0) & (ct > 0)):
        raise ValueError("a zero row or column of the table has a positive target")
    adjusted, _, _, converged, _ = _ipf_batched(t, rt, ct, max_iter, tol)
    if not np.all(converged):
        raise ValueError(f"IPF did not converge in {max_iter} sweeps (structural zeros?)")
    return adjusted


def _snake_order(nx: int, ny: int) -> np.ndarray:
    """Flat indices of an (nx, ny) table in boustrophedon order (neighbours stay neighbours)."""
    idx = np.arange(nx * ny).reshape(nx, ny)
    idx[1::2] = idx[1::2, ::-1]
    return idx.ravel()


def _merge_rows_together(labels: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`~validator.stats.binned.merge_histogram_rows` of several ``(n_hist, n_bins)``
    arrays sharing ``labels``, in one ``bincount`` (the toys' hot loop)."""
    n_hist, n = values[0].shape
    g = np.broadcast_to(np.asarray(labels, dtype=np.int64), (n_hist, n))
    merged = merge_histogram_rows(np.concatenate(values), np.concatenate([g] * len(values)))
    return tuple(merged[k * n_hist:(k + 1) * n_hist] for k in range(len(values)))


def _statistic(
    data: np.ndarray,
    adjusted: np.ndarray,
    factor2: np.ndarray,
    s2: np.ndarray,
    order: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chi² over merged cells for tables ``(n_tables, nx, ny)``.

    Cells are taken in ``order`` (boustrophedon) and summed per group ``labels`` (in
    ``order``: one grouping shared by all tables, or one row per table; :func:`_cell_groups`).
    Returns X², merged n and merged A (columns of groups a table does not have are zero).
    """
    flat = (data.shape[0], -1)
    d = data.reshape(flat)[:, order]
    a = adjusted.reshape(flat)[:, order]
    v = (factor2 * s2).reshape(flat)[:, order]
    n_g, a_g, v_g = _merge_rows_together(labels, d, a, v)
    v_g = v_g + a_g
    with np.errstate(divide="ignore", invalid="ignore"):
        contrib = np.where((n_g == a_g), 0.0, (n_g - a_g) ** 2 / np.maximum(v_g, 1e-12))
    return contrib.sum(axis=-1), n_g, a_g


def _cell_groups(
    expected: np.ndarray,
    w: np.ndarray,
    s2: np.ndarray,
    order: np.ndarray,
    min_expected: float,
    min_sim_entries: float | None,
) -> np.ndarray:
    """Group labels (in ``order``) of the cells: :func:`merge_sparse_bins` on the null fit's
    expected data counts and, unless ``min_sim_entries`` is ``None``, on the simulation's
    equivalent entries (its observed sums of weights and of squared weights)."""
    if min_sim_entries is None:
        return merge_sparse_bins(expected.ravel()[order], min_expected)
    return merge_sparse_bins(
        expected.ravel()[order],
        min_expected,
        sim_sumw=w.ravel()[order],
        sim_sumw2=s2.ravel()[order],
        min_sim_entries=min_sim_entries,
    )


def nonnegative_table(w: np.ndarray, order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r"""The simulated tables (batched, ``(..., nx, ny)``) made non-negative for raking,
    keeping every merged group's signed sum of weights.

    In each group :math:`g`, cells with negative content are set to zero and the positive
    cells are scaled by :math:`W_g / P_g` (signed sum over positive part), so the group keeps
    :math:`W_g = \sum_{ij\in g} w_{ij}`, the unbiased estimate of its content. Clipping the
    negative cells alone would raise every group with a negative cell by
    :math:`\sum \max(-w_{ij}, 0)`, a bias of the order of the fluctuation itself where
    NLO-like weights cancel. A group whose signed sum is not positive gets zero.
    """
    shape = w.shape
    flat = w.reshape(-1, shape[-2] * shape[-1])[:, order]
    pos = np.clip(flat, 0.0, None)
    g = np.broadcast_to(np.asarray(labels, dtype=np.int64), flat.shape)
    w_g, p_g = _merge_rows_together(g, flat, pos)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where((w_g > 0) & (p_g > 0), w_g / p_g, 0.0)
    out_ordered = pos * np.take_along_axis(scale, g, axis=1)
    out = np.empty_like(flat)
    out[:, order] = out_ordered
    return out.reshape(shape)


def null_fit(
    n: np.ndarray, w: np.ndarray, s2: np.ndarray, n_iter: int = 200, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    r"""Fit data and simulation jointly under the null "same dependence, free marginals".

    Model: :math:`n_{ij} \sim \mathrm{Poisson}(a_i b_j \theta_{ij})` for the data and, for the
    simulation, :math:`w_{ij}/u_{ij} \sim \mathrm{Poisson}(\theta_{ij}/u_{ij})` with the
    per-cell mean weight :math:`u_{ij} = s^2_{ij}/w_{ij}` (scaled Poisson, Bohm & Zech, NIM A
    748 (2014) 1; the histogram's mean weight where a cell has no positive content). The
    likelihood equations are solved by alternating
    :math:`\theta_{ij} = (n_{ij} + w_{ij}/u_{ij}) / (a_i b_j + 1/u_{ij})` with raking of
    :math:`a, b` to the data's marginals (a cyclic ascent, as IPF is for log-linear models:
    Bishop, Fienberg & Holland 1975). The estimate of the common structure :math:`\theta`
    pools both samples, so it is smoother than the simulation alone: the toys drawn from it
    are not rougher than the real world.

    Returns
    -------
    tuple of numpy.ndarray
        The simulation's expected table :math:`\theta` and the data's :math:`a_i b_j\theta_{ij}`.
    """
    pos = (w > 0) & (s2 > 0)
    tot_w, tot_s2 = float(np.clip(w, 0.0, None).sum()), float(s2.sum())
    mean_u = tot_s2 / tot_w if tot_w > 0 and tot_s2 > 0 else 1.0
    u = np.where(pos, s2 / np.where(pos, w, 1.0), mean_u)
    m = np.where(pos, w / u, 0.0)
    row_t, col_t = n.sum(axis=1), n.sum(axis=0)
    theta = np.clip(w, 0.0, None)
    a = np.ones(n.shape[0])
    b = np.ones(n.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(n_iter):
            rows = (theta * b[None, :]).sum(axis=1)
            a = np.where(rows > 0, row_t / rows, 0.0)
            cols = (theta * a[:, None]).sum(axis=0)
            b = np.where(cols > 0, col_t / cols, 0.0)
            rho = a[:, None] * b[None, :]
            new = (n + m) / (rho + 1.0 / u)
            change = float(np.max(np.abs(new - theta)) / max(float(new.max()), _TINY))
            theta = new
            if change < tol:
                break
    return theta, a[:, None] * b[None, :] * theta


def _toy_statistics_numpy(
    n_toy: np.ndarray,
    w_toy: np.ndarray,
    s2_toy: np.ndarray,
    data_null: np.ndarray,
    order: np.ndarray,
    labels: np.ndarray,
    *,
    min_expected: float,
    min_sim_entries: float | None,
    pseudo: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """X² of a batch of toys ``(n_toys, nx, ny)`` and whether each counts (raked, finite).

    The numpy formulation, batched over the toys: the reference for the compiled
    :func:`validator.stats.dependence_kernel.dependence_toys`, and what runs without numba.
    Each toy is grouped (by the rule of step 2 on its own simulation unless
    ``min_sim_entries`` is ``None``, then with the observation's ``labels``), made
    non-negative, raked (retried with the pseudo-content where it does not converge, unless
    the observation already needed ``pseudo``) and given its X², as the observation is.
    """
    size = n_toy.shape[0]
    if min_sim_entries is None:
        labels_toy = labels
    else:
        # The grouping depends on the simulation: every toy is grouped by the same rule.
        labels_toy = merge_sparse_bins_batched(
            data_null.ravel()[order],
            w_toy.reshape(size, -1)[:, order],
            s2_toy.reshape(size, -1)[:, order],
            min_expected,
            min_sim_entries,
        )
    s2_toy, _ = _fill_empty_cells(w_toy, s2_toy)
    t_toy = nonnegative_table(w_toy, order, labels_toy) + pseudo
    rows_toy, cols_toy = n_toy.sum(axis=2), n_toy.sum(axis=1)
    a_toy, r_toy, c_toy, conv_toy, _ = _ipf_batched(t_toy, rows_toy, cols_toy, max_iter, tol)
    retry = ~conv_toy
    if retry.any() and pseudo == 0.0:
        # As for the observation: a toy that cannot be raked gets the pseudo-content.
        t_retry = t_toy[retry]
        t_retry = t_retry + PSEUDO_CONTENT * t_retry.mean(axis=(1, 2), keepdims=True)
        a_r, r_r, c_r, conv_r, _ = _ipf_batched(
            t_retry, rows_toy[retry], cols_toy[retry], max_iter, tol
        )
        a_toy[retry], r_toy[retry], c_toy[retry], conv_toy[retry] = (a_r, r_r, c_r, conv_r)
    with np.errstate(over="ignore", invalid="ignore"):
        f2_toy = (r_toy[:, :, None] * c_toy[:, None, :]) ** 2
        x2_toy = _statistic(n_toy, a_toy, f2_toy, s2_toy, order, labels_toy)[0]
    return x2_toy, conv_toy & np.isfinite(x2_toy)


def dependence(
    data_counts: ArrayLike,
    sim_sumw: ArrayLike,
    sim_sumw2: ArrayLike,
    *,
    n_toys: int = 500,
    min_expected: float = 5.0,
    rng: np.random.Generator | int | None = None,
    max_iter: int = 1000,
    tol: float = 1e-10,
    max_toys: int | None = None,
    thresholds: Sequence[float] = (),
    coarse_above: float | None = None,
    sim_count: ArrayLike | None = None,
    sim_sumw3: ArrayLike | None = None,
    min_sim_entries: float | None = DEPENDENCE_MIN_SIM_ENTRIES,
) -> GofResult:
    r"""Chi² test of a pair's dependence after raking the simulation to the data's marginals.

    1. Rows and columns without data are dropped (and then any without positive simulation;
       both are counted in ``details``).
    2. Cells are grouped (neighbours in boustrophedon order,
       :func:`validator.stats.binned.merge_sparse_bins`) until every group :math:`g` has an
       expected data count of at least ``min_expected`` under the null fit of step 5 (which
       pools data and simulation; merging on the raked table itself would select the groups
       on the observation's own fluctuations, and the toys would not reproduce that) and, unless
       ``min_sim_entries`` is ``None``, a positive simulated sum of weights with at least
       ``min_sim_entries`` equivalent simulated entries :math:`(\sum_g w)^2/\sum_g s^2`.
       Without the second rule a cell where the simulation holds zero or one small-weight
       event while the data hold a dozen stays on its own: its :math:`s^2` is far below the
       simulation's real fluctuation there, toys drawn from it cannot reproduce that, and a
       null comparison can give :math:`p \sim 10^{-20}`.
    3. Negative simulated cells (NLO weights): IPF needs a non-negative table. Setting them
       to zero would raise each group by the clipped amount (a bias of the order of the
       fluctuation where positive and negative weights cancel), so instead, within each group,
       negative cells are set to zero and the group's positive cells scaled so that the
       group keeps its signed sum of weights (:func:`nonnegative_table`; a group with a
       non-positive sum gets zero). The toys are treated the same way, with the same groups.
    4. That table :math:`t_{ij}` is raked to the data's row and column sums by IPF
       (:func:`ipf`): :math:`A_{ij} = r_i c_j t_{ij}`, and

       .. math::

          X^2 = \sum_g \frac{(n_g - A_g)^2}{A_g + \sum_{ij \in g} r_i^2 c_j^2 s_{ij}^2},

       a Pearson chi² with the simulation's statistical variance added (as in Gagunashvili,
       arXiv:physics/0605123, for a weighted histogram).
    5. Its nominal number of degrees of freedom, :math:`(n_x-1)(n_y-1)` less the number of
       merges, is only approximate (the simulation fluctuates and is raked), so the p-value is
       calibrated by a parametric bootstrap under the null, fitted to data and simulation
       jointly (:func:`null_fit`: a common dependence structure :math:`\theta_{ij}` with free
       marginals; its simulation part counts a negative cell as empty): data toys
       :math:`n^*_{ij} \sim \mathrm{Poisson}(a_i b_j\theta_{ij})`, simulation toys
       :math:`(w^*_{ij}, s^{2*}_{ij})` with mean :math:`\theta_{ij}` from
       :func:`validator.stats.binned.sim_toys` (compound Poisson from each cell's weight
       moments with ``sim_count`` and ``sim_sumw3``, else scaled Poisson); the cells of
       every toy grouped by the rule of step 2 applied to the toy's own simulation (the
       grouping depends on the simulation, and a bootstrap must repeat every step that
       depends on the sample: B. Efron and R. J. Tibshirani, "An Introduction to the
       Bootstrap", 1993, ch. 6; keeping the observation's groups made the toys more extreme
       than the observation, whose groups were formed around its own sparse cells); IPF
       redone on every toy with the toy's own marginals, and the statistic recomputed;
       :math:`p = (1 + \#\{X^{2*} \ge X^2\})/(1 + n_\mathrm{toys})` (Davison & Hinkley,
       "Bootstrap methods and their application", 1997, sec. 4.2). A toy is raked like the
       observation (with the pseudo-content below if needed); one that still cannot be raked
       counts as at least as extreme (conservative; ``details["n_toys_not_raked"]``). When no
       toy reaches the observation the p-value is the bound :math:`1/(1+n_\mathrm{toys})`
       (``pvalue_is_bound``); with ``max_toys`` and ``thresholds`` toys are added while a
       decision is open (:func:`validator.stats.toys.run_toys`).

    Special cases: a cell without simulated events gets the variance of one event of mean
    weight, :math:`s^2 = \sum s^2 / \sum w` (as ROOT's ``Chi2Test`` "UW" does for an empty
    bin). When structural zeros of a sparse simulated table make the data's marginals
    unreachable, every cell gets a pseudo-content of ``PSEUDO_CONTENT`` (1%) of the mean cell
    (a strictly positive table can always be raked: R. Sinkhorn, Ann. Math. Statist. 35 (1964)
    876), recorded in ``details["ipf_pseudo_content"]`` and used for the toys as well.

    Parameters
    ----------
    data_counts:
        Data counts, shape ``(nx, ny)``.
    sim_sumw:
        Simulated sum of weights, shape ``(nx, ny)``.
    sim_sumw2:
        Simulated sum of squared weights, shape ``(nx, ny)``.
    n_toys:
        Number of pseudo-experiments; 0 gives the approximate asymptotic p-value (flagged
        ``reliable=False``).
    min_expected:
        Minimum expected data count of a merged cell group.
    rng:
        Random generator or seed for the toys.
    max_iter, tol:
        IPF controls (see :func:`ipf`).
    max_toys, thresholds:
        Adaptive toys (:func:`validator.stats.toys.run_toys`): up to ``max_toys`` in all
        while a threshold lies inside the 99.9% Clopper-Pearson interval of the toy p-value or
        the p-value is a bound above the smallest threshold. ``None`` / ``()``: exactly
        ``n_toys``.
    coarse_above:
        p-values above this level (and above every threshold) may be coarse: the toys stop
        at the h-th toy reaching the observation (Besag & Clifford's sequential p-value,
        :func:`validator.stats.toys.sequential_stop`); decisions at that level and below
        are unchanged. ``None``: ``n_toys`` always.
    sim_count, sim_sumw3:
        Number of simulated events and sum of cubed weights per cell (shape ``(nx, ny)``, both
        or neither), for compound-Poisson toys.
    min_sim_entries:
        Minimum equivalent simulated entries of a cell group (step 2; default
        :data:`DEPENDENCE_MIN_SIM_ENTRIES`, chosen by calibration); ``None`` merges on the
        expected data counts alone (the rule of earlier releases).

    Returns
    -------
    GofResult
        ``method="dependence"``, ``ndf`` the nominal degrees of freedom, ``residuals`` the
        per-cell Pearson residuals :math:`(n_{ij} - A_{ij})/\sqrt{A_{ij} + r_i^2c_j^2s_{ij}^2}`
        with the input's shape (0 for dropped rows/columns), ``effect_size`` the largest
        :math:`|n_g/A_g - 1|` over merged groups (``max_abs_ratio_dev_ipf``). ``details`` also
        give Cramér's V of the excess, :math:`\sqrt{\max(X^2 - \mathrm{ndf}, 0)/(N(k-1))}`,
        with :math:`k = \min(n_x, n_y)`.

    Raises
    ------
    ValueError
        On shapes that are not 2D and equal, negative or non-finite inputs where not allowed,
        fewer than two rows or columns with data, or a table that cannot be raked even with
        the pseudo-content.
    """
    n_in = np.asarray(data_counts, dtype=float)
    w_in = np.asarray(sim_sumw, dtype=float)
    s2_in = np.asarray(sim_sumw2, dtype=float)
    if n_in.ndim != 2 or not (n_in.shape == w_in.shape == s2_in.shape):
        raise ValueError(
            f"need equal 2D shapes: data {n_in.shape}, sim_sumw {w_in.shape}, "
            f"sim_sumw2 {s2_in.shape}"
        )
    for name, arr in (("data_counts", n_in), ("sim_sumw", w_in), ("sim_sumw2", s2_in)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
    if np.any(n_in < 0) or np.any(s2_in < 0):
        raise ValueError("data_counts and sim_sumw2 must be non-negative")
    if n_toys < 0:
        raise ValueError("n_toys must be >= 0")

    cnt_flat, s3_flat = optional_sums(n_in.shape, sim_count, sim_sumw3)
    check_toy_options(n_toys, max_toys, thresholds)

    t_in = np.clip(w_in, 0.0, None)
    keep_x = n_in.sum(axis=1) > 0
    keep_y = n_in.sum(axis=0) > 0
    dropped_data_x, dropped_data_y = int((~keep_x).sum()), int((~keep_y).sum())
    # Rows/columns with data but no positive simulation cannot be raked: drop them, and
    # repeat, since dropping one may leave another without data.
    while True:
        sub_t = t_in[np.ix_(keep_x, keep_y)]
        sub_n = n_in[np.ix_(keep_x, keep_y)]
        bad_x = (sub_t.sum(axis=1) <= 0) | (sub_n.sum(axis=1) <= 0)
        bad_y = (sub_t.sum(axis=0) <= 0) | (sub_n.sum(axis=0) <= 0)
        if not (bad_x.any() or bad_y.any()):
            break
        keep_x[np.flatnonzero(keep_x)[bad_x]] = False
        keep_y[np.flatnonzero(keep_y)[bad_y]] = False
    nx, ny = int(keep_x.sum()), int(keep_y.sum())
    if nx < 2 or ny < 2:
        raise ValueError(f"need at least two rows and two columns with data, have {nx}x{ny}")
    cells = np.ix_(keep_x, keep_y)
    n = n_in[cells]
    w = w_in[cells]
    s2 = s2_raw = s2_in[cells]
    cnt = cnt_flat.reshape(n_in.shape)[cells] if cnt_flat is not None else None
    s3 = s3_flat.reshape(n_in.shape)[cells] if s3_flat is not None else None

    # Empty simulated cells get the variance of one event of mean weight (as ROOT's
    # TH1::Chi2Test "UW" does for an empty bin), scaled by the raking factors below.
    s2, n_empty = _fill_empty_cells(w, s2)

    order = _snake_order(nx, ny)
    # Merge cells on the null fit's expected data counts (pooled from data and simulation),
    # not on the raked table itself: the grouping is then the same for the observation and
    # every toy, and not selected on the observation's own fluctuations. A group also needs
    # enough equivalent simulated entries (see merge_sparse_bins).
    sim_null, data_null = null_fit(n, w, s2_raw)
    labels = _cell_groups(data_null, w, s2_raw, order, min_expected, min_sim_entries)
    n_groups = int(labels.max()) + 1
    t = nonnegative_table(w, order, labels)

    row_t, col_t = n.sum(axis=1), n.sum(axis=0)
    pseudo = 0.0
    adjusted, r, c, converged_arr, n_iter = _ipf_batched(t, row_t, col_t, max_iter, tol)
    if not converged_arr:
        # Structural zeros of a sparse table can make the data's marginals unreachable.
        # Give every cell a small pseudo-content (a strictly positive table can always be
        # raked: R. Sinkhorn, Ann. Math. Statist. 35 (1964) 876) and use it for the toys too.
        pseudo = PSEUDO_CONTENT * float(t.sum()) / t.size
        t = t + pseudo
        adjusted, r, c, converged_arr, n_iter = _ipf_batched(t, row_t, col_t, max_iter, tol)
    if not converged_arr:
        raise ValueError(f"IPF did not converge in {max_iter} sweeps")
    factor2 = (r[:, None] * c[None, :]) ** 2

    x2_arr, n_g_arr, a_g_arr = _statistic(
        n[None], adjusted[None], factor2[None], s2[None], order, labels
    )
    x2 = float(x2_arr[0])
    n_g, a_g = n_g_arr[0], a_g_arr[0]
    ndf_nominal = (nx - 1) * (ny - 1) - (nx * ny - n_groups)
    ndf = max(ndf_nominal, 1)

    with np.errstate(divide="ignore", invalid="ignore"):
        cell_var = adjusted + factor2 * s2
        res = np.where(cell_var > 0, (n - adjusted) / np.sqrt(cell_var), 0.0)
        effect = float(np.max(np.abs(n_g / a_g - 1.0)[a_g > 0], initial=0.0))
    residuals = np.zeros(n_in.shape)
    residuals[cells] = res

    tot = float(n.sum())
    details: dict[str, object] = {
        "nx_used": nx,
        "ny_used": ny,
        "rows_dropped_no_data": dropped_data_x,
        "cols_dropped_no_data": dropped_data_y,
        "rows_dropped_no_sim": int(n_in.shape[0] - nx - dropped_data_x),
        "cols_dropped_no_sim": int(n_in.shape[1] - ny - dropped_data_y),
        "n_cells_negative_sim": int(np.sum(w < 0)),
        "n_groups": n_groups,
        "min_sim_entries": min_sim_entries,
        "ndf_nominal": ndf_nominal,
        "pvalue_asymptotic": float(stats.chi2.sf(x2, ndf)),
        "ipf_pseudo_content": pseudo,
        "n_cells_empty_sim": n_empty,
        "ipf_iterations": int(n_iter),
        "cramers_v_excess": float(np.sqrt(max(x2 - ndf, 0.0) / (tot * (min(nx, ny) - 1)))),
    }

    pvalue_is_bound = False
    n_toys_total = None
    if n_toys > 0:
        gen = np.random.default_rng(rng)

        sim_law = SimToyLaw(sim_null, w, s2_raw, sim_count=cnt, sim_sumw3=s3)
        expected_in_order = data_null.ravel()[order]

        def draw(size: int) -> np.ndarray:
            n_toy = poisson_toys(gen, data_null, size)
            w_toy, s2_toy = sim_law.draw(size, gen)
            # A toy whose simulation cannot be raked to its data's marginals (new empty rows
            # or structural zeros in a sparse table) has no statistic: it counts as at least
            # as extreme as the observation, which keeps the p-value conservative.
            # compiled where numba is available (about 4 µs a toy on a 10x10 table instead
            # of 25; the same results up to floating-point summation order)
            if compiled.HAVE_NUMBA:
                x2_toy, good = dependence_toys(
                    n_toy, w_toy, s2_toy, expected_in_order, order, labels,
                    min_expected=min_expected, min_sim_entries=min_sim_entries,
                    pseudo=pseudo, pseudo_content=PSEUDO_CONTENT, max_iter=max_iter, tol=tol)
            else:
                x2_toy, good = _toy_statistics_numpy(
                    n_toy, w_toy, s2_toy, data_null, order, labels,
                    min_expected=min_expected, min_sim_entries=min_sim_entries,
                    pseudo=pseudo, max_iter=max_iter, tol=tol)
            return np.where(good, x2_toy, np.nan)

        options = ToyOptions(n_toys, max_toys, tuple(thresholds), coarse_above)
        law = chi2_tail_law(x2, ndf,
                            details["pvalue_asymptotic"])
        toys = run_toys(x2, draw, options, tail=law)
        pvalue, pvalue_is_bound, n_toys_total = toys.pvalue, toys.pvalue_is_bound, toys.n_toys
        details.update(toys.details)
        details["toy_scheme"] = "compound_poisson" if cnt is not None else "scaled_poisson"
        pvalue_method = "toys"
        reliable = True
        details["x2_toys_mean"] = float(toys.toys.mean()) if toys.toys.size else float("nan")
        details["n_toys_not_raked"] = int(toys.n_failed)
    else:
        pvalue = details["pvalue_asymptotic"]
        pvalue_method = "asymptotic"
        reliable = False
        details["unreliable_reason"] = (
            "asymptotic p-value with nominal ndf: approximate (simulation raked and fluctuating)"
        )

    return GofResult(
        method="dependence",
        statistic=x2,
        pvalue=float(pvalue),
        ndf=ndf,
        effect_size=effect,
        effect_name="max_abs_ratio_dev_ipf",
        pvalue_method=pvalue_method,
        n_toys=n_toys_total,
        reliable=reliable,
        residuals=residuals,
        details=details,
        pvalue_is_bound=pvalue_is_bound,
    )
