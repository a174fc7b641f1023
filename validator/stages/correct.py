"""The correction stage: after a failing validation, derive reweighting corrections of the
simulation, export them as correctionlib, and apply them in a closure run.

``validator correct`` (:func:`derive_corrections`) reads a stored run: which inputs fail (its
reading, :mod:`validator.results.reading`: the 1D features and the mismodelled correlations,
never re-derived here) and its effective configuration (files, selections, definitions,
blinding). It re-reads the run's input files and keeps only the **training half** of the
events, simulation and data alike: a deterministic split by a hash of each event's (file
name, row in the file) (:func:`validator.stats.reweight.split_keys`), so the other half, the
**held-out half**, is independent of the correction and a closure run on it measures how well
the correction transfers (overfitting shows as the difference between the training and the
held-out closure).

Methods:

* ``binned`` (default): for each failing feature, the data/simulation ratio normalised to equal
  totals in equal-population bins of the training data (finer than the test binning: a ratio
  constant over a tenth of the events would leave the shape within its bin, which KS/AD on the
  fine histograms see), with its per-bin statistical uncertainty (data Poisson, simulation
  Σw²), regularised by a Legendre fit of log(ratio) chosen by AIC
  (:func:`validator.stats.reweight.smooth_log_ratio`; A. Rogozhnikov, arXiv:1608.05806,
  discusses why plain bin-by-bin reweighting overfits), in Legendre polynomials of the value,
  the quantile or the normal score; the smooth fit is then written on a finer binning (up to
  200 equal-population bins). A pair whose correlation fails gets a 2D correction fitted on a
  grid of marginal quantiles the same way (a Gaussian copula's correlation is a polynomial of
  degree 2 in the normal scores) and written on 40 x 40 bins. Several corrections are
  derived together by raking (each refitted with the others applied, a few rounds: Deming &
  Stephan, Ann. Math. Stat. 11 (1940) 427). Written as a correctionlib CorrectionSet (schema
  v2, https://cms-nanoaod.github.io/correctionlib/schemav2.html): per correction its inputs, a
  ``syst`` category input (``nominal``, ``up``, ``down``: ±1σ of the fit), a binning (1D) or
  multibinning (2D) with ``flow = "clamp"``, and a description naming the source run and the
  split.
* ``classifier``: the density ratio p_data/p_sim over every tested input learned by a
  classifier on the training half, calibrated and clipped
  (:func:`validator.stats.reweight.classifier_density_ratio`; Cranmer, Pavez & Louppe,
  arXiv:1506.02169). correctionlib's schema v2 has no node for a scikit-learn network (its
  formula, binning, category, transform and hashprng nodes, and lwtnn, cannot carry it): the
  factors are written per simulated event to a parquet file beside the JSON
  (``NAME.events.parquet``, keyed by file name and row), which ``--apply`` reads; the JSON
  holds the metadata and no correction.

The JSON's top-level description ends with a line ``validator-metadata: {...}`` (the source
run, the method, the split, the events file and its sha256): correctionlib's schema allows no
other field, and ``validator run --apply`` reads it back (:func:`load_corrections`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from validator.errors import InputError
from validator.inputs.sources import ENTRY, FILE, Sample, Source
from validator.model.load import sha256_of
from validator.stats.reweight import (
    MAX_DEGREE_1D,
    MAX_DEGREE_2D,
    bin_index,
    binned_ratio,
    file_key,
    legendre_design,
    legendre_design_2d,
    normalise_factors,
    smooth_log_ratio,
    split_keys,
    to_unit,
    weighted_quantile_edges,
)

METHODS = ("binned", "classifier")
#: The halves of the split, by name (``--apply-half``): the correction is derived on the first.
HALVES = ("training", "held-out")
#: What a closure run keeps (``--apply-half``; the option table lists the same).
APPLY_HALVES = ("held-out", "training", "all")
#: Salt of the split's hash (stored in the file: a file says which split it was derived on).
SPLIT_SALT = 0x5EED_C0DE_2026
#: The marker of the metadata line in the CorrectionSet's description.
METADATA_PREFIX = "validator-metadata: "
#: Equal-population bins of a 1D correction: at least this many training data events each...
MIN_DATA_PER_BIN = 400
#: ...and at most this many bins (at least 5).
MAX_BINS_1D = 50
#: A 2D correction's fit grid: about this many training data events per cell, 3-20 bins per
#: axis (marginal quantiles).
MIN_DATA_PER_CELL = 40
MAX_BINS_2D = 20
#: The smoothed corrections are written on finer binnings (equal-population bins of the
#: training data): 1D at most this many bins (at least 20 data events each), 2D this many per
#: axis.
EXPORT_BINS_1D = 200
EXPORT_BINS_2D = 40
#: Raking rounds when several corrections are derived together.
RAKING_ROUNDS = 4
#: Systematic name prefix of a correction's variation in a closure run (``corr_met``).
SYST_PREFIX = "corr_"
#: The weight-variation columns a closure run adds to the simulation.
COLUMN_PREFIX = "_validator_"
#: Events the classifier trains on at most, per sample (a deterministic subsample).
CLASSIFIER_EVENTS = 200_000


# ---------------------------------------------------------------------------------------------
# the split


def source_key(source: Source) -> str:
    """The name an event's file is known by in the split and the events file: the file's base
    name (and the tree of a ROOT file), so a moved file keeps its events' halves."""
    name = PurePath(str(source.path)).name
    return f"{name}:{source.tree}" if source.tree else name


@dataclass(frozen=True)
class HalfFilter:
    """Keep one half of a sample's events (a transform-chain step): ``keep`` 0 is the
    training half, 1 the held-out half."""

    keep: int
    salt: int
    file_keys: tuple[int, ...]  # per source of the sample

    @classmethod
    def of(cls, sample: Sample, half: str, salt: int = SPLIT_SALT) -> HalfFilter:
        return cls(HALVES.index(half), salt,
                   tuple(file_key(source_key(s)) for s in sample.sources))

    def halves(self, chunk: Mapping[str, np.ndarray]) -> np.ndarray:
        keys = np.asarray(self.file_keys, dtype=np.uint64)[np.asarray(chunk[FILE], np.int64)]
        return (split_keys(chunk[ENTRY], keys, self.salt) >= 0.5).astype(np.int8)

    def mask(self, chunk: Mapping[str, np.ndarray], label: str = "") -> np.ndarray:
        return self.halves(chunk) == self.keep


# ---------------------------------------------------------------------------------------------
# corrections as values


@dataclass
class BinnedCorrection:
    """One binned correction: its inputs (one feature, or a pair), its edges per input, and
    the factors per bin (C order for a pair), nominal, up and down. ``raw``/``raw_sigma``:
    the unsmoothed ratio and its statistical uncertainty; ``fit``: what the smoothing chose."""

    name: str
    inputs: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    nominal: np.ndarray
    up: np.ndarray
    down: np.ndarray
    raw: np.ndarray
    raw_sigma: np.ndarray
    fit: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def evaluate(self, values: Sequence[np.ndarray], which: str = "nominal") -> np.ndarray:
        """The factor per event as correctionlib evaluates the exported node (clamp); an
        event with a NaN/inf value in an input gets 1 (correctionlib is not asked for it)."""
        table = {"nominal": self.nominal, "up": self.up, "down": self.down}[which]
        cols = [np.asarray(v, dtype=float) for v in values]
        good = np.logical_and.reduce([np.isfinite(c) for c in cols])
        out = np.ones(len(cols[0]))
        if len(self.inputs) == 1:
            out[good] = table[bin_index(self.edges[0], cols[0][good])]
        else:
            ix = bin_index(self.edges[0], cols[0][good])
            iy = bin_index(self.edges[1], cols[1][good])
            out[good] = table[ix * (len(self.edges[1]) - 1) + iy]
        return out

    def consistency(self) -> tuple[float, int, float]:
        """χ² of the raw ratio against 1 (bins with data), its ndf (one less: the
        normalisation), and the p-value: is the correction consistent with none?"""
        from scipy import stats

        ok = np.isfinite(self.raw_sigma) & (self.raw_sigma > 0)
        chi2 = float(np.sum(((self.raw[ok] - 1.0) / self.raw_sigma[ok]) ** 2))
        ndf = max(int(ok.sum()) - 1, 1)
        return chi2, ndf, float(stats.chi2.sf(chi2, ndf))

    def max_pull(self) -> float:
        """The largest |nominal − 1| / σ over bins (σ = (up − down)/2): ≲ 2-3 means the
        correction is consistent with 1 within its uncertainty."""
        sigma = np.maximum(0.5 * (self.up - self.down), 1e-12)
        return float(np.max(np.abs(self.nominal - 1.0) / sigma))


@dataclass
class CorrectionResult:
    """What ``validator correct`` derived: the corrections (binned) or the per-event factors
    (classifier), the metadata written with them, and the lines of its summary."""

    source_run: str
    method: str
    corrections: list[BinnedCorrection]
    metadata: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    events: Any = None  # classifier: a polars DataFrame of per-event factors
    classifier: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    sha256: str | None = None
    name: str = "corrections"

    def summary_lines(self) -> list[str]:
        return summary_lines(self)


# ---------------------------------------------------------------------------------------------
# correctionlib


def _split_text(meta: Mapping[str, Any]) -> str:
    split = meta["split"]
    return (f"derived on the {split['derived_on']} half of the events (hash of file name and "
            f"row, salt {split['salt']}); close it on the {HALVES[1]} half")


def correction_set(result: CorrectionResult) -> dict[str, Any]:
    """The CorrectionSet of ``result``, validated with correctionlib's own pydantic model
    when correctionlib is installed."""
    meta = result.metadata
    corrections = []
    for c in result.corrections:
        inputs = [{"name": n, "type": "real", "description": f"the input {n}"}
                  for n in c.inputs]
        inputs.append({"name": "syst", "type": "string",
                       "description": "nominal, up or down (±1σ statistical uncertainty)"})

        def node(values: np.ndarray, c: BinnedCorrection = c) -> dict[str, Any]:
            content = [float(v) for v in values]
            if len(c.inputs) == 1:
                return {"nodetype": "binning", "input": c.inputs[0],
                        "edges": [float(e) for e in c.edges[0]], "content": content,
                        "flow": "clamp"}
            return {"nodetype": "multibinning", "inputs": list(c.inputs),
                    "edges": [[float(e) for e in edges] for edges in c.edges],
                    "content": content, "flow": "clamp"}

        fit = c.fit
        corrections.append({
            "name": c.name, "version": 1,
            "description": (f"data/simulation reweighting of {' x '.join(c.inputs)} from "
                            f"validator run {result.source_run} ({c.reason}); "
                            f"{_split_text(meta)}; ratio normalised to equal totals, "
                            f"smoothed by a {fit.get('basis', '')} Legendre fit of "
                            f"log(ratio) of degree {fit.get('degree')} (AIC); up/down: ±1σ "
                            "of the fit"),
            "inputs": inputs,
            "output": {"name": "weight", "type": "real",
                       "description": "factor multiplying the simulation's event weight"},
            "data": {"nodetype": "category", "input": "syst", "content": [
                {"key": k, "value": node(v)} for k, v in
                (("nominal", c.nominal), ("up", c.up), ("down", c.down))]},
        })
    lines = [f"validator correct ({result.method}) of run {result.source_run}: "
             f"{_split_text(meta)}."]
    if result.method == "classifier":
        lines.append("The classifier's density ratio is not expressible in correctionlib "
                     "(no node evaluates a scikit-learn network): its per-event factors are "
                     f"in {meta.get('events_file')} (keyed by file name and row).")
    lines.append(METADATA_PREFIX + json.dumps(meta, sort_keys=True, default=str))
    payload = {"schema_version": 2, "description": "\n".join(lines),
               "corrections": corrections}
    try:
        from correctionlib import schemav2
    except ImportError:
        return payload
    return json.loads(schemav2.CorrectionSet.model_validate(payload).model_dump_json(
        exclude_unset=True))


def write_corrections(result: CorrectionResult, out: str | Path) -> list[Path]:
    """Write the CorrectionSet to ``out`` (and, for the classifier, the per-event factors to
    ``NAME.events.parquet`` beside it); returns the files. ``result.sha256`` is the JSON's."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name, e.g. corrections.json")
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    files = []
    if result.events is not None:
        events_path = out.with_name(out.stem + ".events.parquet")
        result.events.write_parquet(events_path)
        result.metadata["events_file"] = events_path.name
        result.metadata["events_sha256"] = sha256_of(events_path)
        files.append(events_path)
    text = json.dumps(correction_set(result), indent=1)
    out.write_text(text + "\n")
    result.sha256 = sha256_of(out)
    result.name = out.stem
    result.files = [out, *files]
    return result.files


# ---------------------------------------------------------------------------------------------
# reading a correction file back (validator run --apply)


@dataclass
class CorrectionFile:
    """A correction file written by ``validator correct``, read for ``--apply``."""

    path: Path
    sha256: str
    metadata: dict[str, Any]
    corrections: list[BinnedCorrection]
    events: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # file key -> rows, factors

    @property
    def inputs(self) -> list[str]:
        names = [n for c in self.corrections for n in c.inputs]
        return list(dict.fromkeys(names))

    @property
    def syst_names(self) -> list[str]:
        if self.events is not None:
            return [f"{SYST_PREFIX}classifier"]
        return [f"{SYST_PREFIX}{c.name}" for c in self.corrections]

    def columns(self, syst: str) -> tuple[str, str]:
        return (f"{COLUMN_PREFIX}{syst}_up", f"{COLUMN_PREFIX}{syst}_down")

    def describe(self, half: str) -> dict[str, Any]:
        """What a closure run records of the correction it applied."""
        meta = self.metadata
        return {"name": self.path.stem, "path": str(self.path), "sha256": self.sha256,
                "source_run_id": meta.get("source_run"), "method": meta.get("method"),
                "features": self.inputs or list(meta.get("features", [])),
                "derived_on": meta.get("split", {}).get("derived_on"), "half": half,
                "systematics": self.syst_names}


def _binned_from_node(name: str, node: Mapping[str, Any]) -> BinnedCorrection:
    if node.get("nodetype") != "category" or node.get("input") != "syst":
        raise ValueError("its data is not a category node on 'syst'")
    tables: dict[str, Any] = {}
    for item in node["content"]:
        tables[item["key"]] = item["value"]
    if set(tables) != {"nominal", "up", "down"}:
        raise ValueError("its 'syst' keys are not nominal, up, down")
    first = tables["nominal"]
    if first.get("nodetype") == "binning":
        inputs, edges = (first["input"],), (np.asarray(first["edges"], float),)
    elif first.get("nodetype") == "multibinning":
        inputs = tuple(first["inputs"])
        edges = tuple(np.asarray(e, float) for e in first["edges"])
    else:
        raise ValueError(f"node type {first.get('nodetype')} is not a binning")
    if first.get("flow") != "clamp":
        raise ValueError("its binning's flow is not 'clamp'")
    values = {k: np.asarray(v["content"], dtype=float) for k, v in tables.items()}
    return BinnedCorrection(name, inputs, edges, values["nominal"], values["up"],
                            values["down"], values["nominal"],
                            np.full(len(values["nominal"]), np.nan))


def load_corrections(path: str | Path) -> CorrectionFile:
    """Read a file written by ``validator correct`` (:class:`InputError`, one line naming
    the file and what is wrong, for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--apply {path}: file not found")
    try:
        raw = path.read_bytes()
        payload = json.loads(raw.decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--apply {path}: not a JSON file ({exc})") from exc
    description = payload.get("description") if isinstance(payload, dict) else None
    lines = [ln for ln in (description or "").splitlines() if ln.startswith(METADATA_PREFIX)]
    if payload.get("schema_version") != 2 or not lines:
        raise InputError(f"--apply {path}: not a correction file of validator correct (a "
                         "correctionlib CorrectionSet whose description holds a "
                         f"'{METADATA_PREFIX.strip()}' line)")
    try:
        meta = json.loads(lines[-1][len(METADATA_PREFIX):])
        corrections = [_binned_from_node(c["name"], c["data"])
                       for c in payload.get("corrections", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--apply {path}: unusable correction ({exc})") from exc
    events = None
    if meta.get("method") == "classifier":
        events_path = path.with_name(str(meta.get("events_file", "")))
        if not meta.get("events_file") or not events_path.is_file():
            raise InputError(f"--apply {path}: its events file {events_path} is missing")
        if sha256_of(events_path) != meta.get("events_sha256"):
            raise InputError(f"--apply {path}: its events file {events_path} was changed "
                             "(sha256 differs from the one recorded)")
        events = _events_table(events_path)
    elif not corrections:
        raise InputError(f"--apply {path}: holds no correction (nothing failed in run "
                         f"{meta.get('source_run')}?)")
    return CorrectionFile(path, hashlib.sha256(raw).hexdigest(), meta, corrections, events)


def _events_table(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import polars as pl

    frame = pl.read_parquet(path)
    out = {}
    for (key,), part in frame.sort(["file", "row"]).group_by(["file"], maintain_order=True):
        out[str(key)] = (part["row"].to_numpy(),
                         np.stack([part[c].to_numpy() for c in ("nominal", "up", "down")]))
    return out


@dataclass
class WeightCorrector:
    """The transform-chain step of a closure run: multiplies the simulation's weight by the
    corrections' nominal factor and adds, per correction, the up and down weights as columns
    (the weight systematics ``corr_NAME``). An event with a NaN/inf input is not corrected."""

    correction: CorrectionFile
    weight: str
    sources: tuple[str, ...]  # the sample's file keys, per source index

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for s in self.correction.syst_names for c in self.correction.columns(s))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.correction.inputs)

    def factors(self, chunk: Mapping[str, np.ndarray], label: str = ""
                ) -> dict[str, np.ndarray]:
        """Per correction (by systematic name): the (nominal, up, down) factors."""
        corr = self.correction
        if corr.events is not None:
            return {corr.syst_names[0]: self._event_factors(chunk, label)}
        out = {}
        for c, syst in zip(corr.corrections, corr.syst_names, strict=True):
            values = [chunk[n] for n in c.inputs]
            out[syst] = np.stack([c.evaluate(values, w) for w in ("nominal", "up", "down")])
        return out

    def _event_factors(self, chunk: Mapping[str, np.ndarray], label: str) -> np.ndarray:
        files, rows = np.asarray(chunk[FILE], np.int64), np.asarray(chunk[ENTRY], np.int64)
        out = np.ones((3, len(rows)))
        events = self.correction.events or {}
        for f in np.unique(files):
            key = self.sources[int(f)]
            sel = files == f
            if key not in events:
                raise InputError(f"{label or key}: --apply {self.correction.path.name}: no "
                                 f"factors for the file {key} (its events file covers the "
                                 "source run's simulation files)")
            known, factors = events[key]
            pos = np.clip(np.searchsorted(known, rows[sel]), 0, len(known) - 1)
            missing = known[pos] != rows[sel]
            if missing.any():
                raise InputError(f"{label or key}: --apply {self.correction.path.name}: no "
                                 f"factor for row {int(rows[sel][missing][0])} (the events "
                                 "file covers the events the source run selected: use its "
                                 "selection)")
            out[:, sel] = factors[:, pos]
        return out

    def apply(self, chunk: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        w = np.asarray(chunk[self.weight], dtype=np.float64)
        per = self.factors(chunk, label)
        nominal = np.prod([f[0] for f in per.values()], axis=0) if per else np.ones(len(w))
        out = dict(chunk)
        out[self.weight] = w * nominal
        for syst, f in per.items():
            others = np.divide(nominal, f[0], out=np.ones_like(nominal), where=f[0] != 0)
            up, down = self.correction.columns(syst)
            out[up], out[down] = w * others * f[1], w * others * f[2]
        return out


def corrector_for(correction: CorrectionFile, sample: Sample) -> WeightCorrector:
    """The closure run's reweighting step of the simulation ``sample``."""
    if sample.weight is None:
        raise InputError(f"--apply {correction.path}: needs --weight (the corrections multiply "
                         "the simulation's event weight)")
    return WeightCorrector(correction, sample.weight,
                           tuple(source_key(s) for s in sample.sources))


# ---------------------------------------------------------------------------------------------
# deriving


@dataclass(frozen=True)
class _Spec:
    inputs: tuple[str, ...]
    reason: str

    @property
    def name(self) -> str:
        return "__".join(self.inputs)


def failing_inputs(reading: Any) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """The inclusive category's failing features (1D) and mismodelled correlations (pairs),
    from the run's reading (never re-derived), and notes on what is left out."""
    from validator.results.reading import INCLUSIVE

    found = reading.findings
    feats = [f for (cat, f) in found.features if cat == INCLUSIVE]
    pairs = [(x, y) for (cat, x, y) in found.correlations if cat == INCLUSIVE]
    notes = []
    other = sorted({cat for (cat, _f) in found.features if cat != INCLUSIVE})
    if other:
        notes.append(f"failures in categories {', '.join(other)} are not corrected per "
                     "category (the inclusive sample is)")
    if found.outputs:
        notes.append("failing network outputs are not corrected (they follow from the inputs)")
    if found.multivariate:
        notes.append("a multivariate test fails: a binned correction cannot fix what lives in "
                     "three or more inputs at once; try --method classifier")
    return feats, pairs, notes


def _specs(feats: Sequence[str], pairs: Sequence[tuple[str, str]], requested: Sequence[str]
           ) -> tuple[list[_Spec], list[str]]:
    specs = [_Spec((f,), "fails in 1D") for f in feats]
    specs += [_Spec((f,), "requested") for f in requested if f not in feats]
    notes = []
    used: set[str] = set()
    for x, y in pairs:
        if used & {x, y}:
            notes.append(f"the correlation of {x} x {y} is not corrected: it shares an input "
                         "with a pair corrected before")
            continue
        used |= {x, y}
        specs.append(_Spec((x, y), "correlation fails"))
    return specs, notes


def _source_config(db: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from validator.results.tables import run_table

    runs = run_table(db, run_id, "runs")
    row = runs.iloc[0].to_dict()
    text = row.get("config_json")
    if not isinstance(text, str):
        raise InputError(f"{db}: run {run_id} has no stored configuration (written by an "
                         "older validator): it cannot be re-read for a correction")
    return json.loads(text), row


@dataclass
class _Inputs:
    """The source run's samples and transform chains, rebuilt from its configuration."""

    sim: Sample
    data: Sample
    sim_chain: Any
    data_chain: Any
    chunk_rows: int
    features: list[str]
    kinds: dict[str, str]


def _rebuild_inputs(config: Mapping[str, Any], plan_json: str | None) -> _Inputs:
    from validator.inputs.sources import Selection, open_sample
    from validator.inputs.transform import TransformChain, parse_definitions
    from validator.stages.plan import Plan

    if config.get("apply"):
        raise InputError(f"validator correct: the run is a closure run (--apply "
                         f"{config['apply']}, the {config.get('apply_half')} half): derive "
                         "corrections from the run it corrects, or from a run of all events")
    if config.get("model"):
        raise InputError("validator correct: the source run audited a network (--model); "
                         "re-reading its inputs with the network's outputs is not supported "
                         "yet: correct a run without --model")
    sim = open_sample("sim", config["sim"], config.get("weight"))
    data = open_sample("data", config["data"], None)
    defs = parse_definitions(config.get("defines") or [])
    blind = Selection.parse(config["blind"], "--blind") if config.get("blind") else None
    data_defs = tuple(d for d in defs if all(data.has(c) or c in {n for e in defs
                                                                   for n in e.names}
                                             for c in d.inputs))

    def chain(text: str | None, option: str, made: tuple[Any, ...]) -> Any:
        return TransformChain(selection=Selection.parse(text, option) if text else None,
                              derived=made, blind=blind)

    plan = Plan.from_json(plan_json) if isinstance(plan_json, str) else None
    features = plan.feature_names if plan is not None else []
    kinds = {f.name: f.kind for f in plan.features} if plan is not None else {}
    return _Inputs(sim, data, chain(config.get("sim_selection"), "--sim-selection", defs),
                   chain(config.get("data_selection"), "--data-selection", data_defs),
                   int(config.get("chunk_rows") or 1_000_000), features, kinds)


def _read(sample: Sample, chain: Any, columns: Sequence[str], chunk_rows: int,
          half: str | None) -> dict[str, np.ndarray]:
    """The columns (and the weight, file and row) of a sample's events through its chain, of
    one half; None: both, with each event's half (``_half``)."""
    from dataclasses import replace as dc_replace

    from validator.inputs.transform import Reader

    split = HalfFilter.of(sample, half or HALVES[0])
    if half is not None:
        chain = dc_replace(chain, split=split)
    made = set(chain.derived_names)
    missing = [c for c in columns if c not in sample.columns and c not in made]
    if missing:
        raise InputError(f"{sample.sources[0].label}: no column '{missing[0]}' (needed by the "
                         "correction)")
    reader = Reader(sample, list(dict.fromkeys(columns)), chunk_rows, chain)
    parts: dict[str, list[np.ndarray]] = {
        c: [] for c in [*columns, FILE, ENTRY, "_w", *(["_half"] if half is None else [])]}
    for chunk in reader:
        for c in columns:
            parts[c].append(np.asarray(chunk[c], dtype=np.float64))
        parts[FILE].append(np.asarray(chunk[FILE], np.int64))
        parts[ENTRY].append(np.asarray(chunk[ENTRY], np.int64))
        n = len(chunk[ENTRY])
        parts["_w"].append(np.asarray(chunk[sample.weight], np.float64) if sample.weight
                           else np.ones(n))
        if half is None:
            parts["_half"].append(split.halves(chunk))
    return {c: (np.concatenate(v) if v else np.empty(0)) for c, v in parts.items()}


def _valid(x: np.ndarray) -> np.ndarray:
    from validator.stages.plan import SENTINEL_VALUES

    return np.isfinite(x) & ~np.isin(x, SENTINEL_VALUES)


def _grid(edges: np.ndarray, xd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of ``edges``: the training data's mean value in it and its mid-quantile."""
    n = len(edges) - 1
    idd = bin_index(edges, xd)
    counts = np.bincount(idd, minlength=n).astype(float)
    mean = np.bincount(idd, xd, n) / np.maximum(counts, 1)
    mean = np.where(counts > 0, mean, 0.5 * (edges[1:] + edges[:-1]))
    u = (np.cumsum(counts) - 0.5 * counts) / max(counts.sum(), 1)
    return mean, np.clip(u, 1e-6, 1 - 1e-6)


@dataclass(frozen=True)
class _Axis:
    """How a correction's axis is expanded in Legendre polynomials: in the value (mapped by
    the fit grid's range), the quantile (2u − 1) or the normal score (Φ⁻¹(u), scaled by the
    fit grid's largest): a scale change is polynomial in the value, a correlation of a
    Gaussian copula in the normal scores."""

    low: float
    high: float
    z_max: float

    @classmethod
    def of(cls, mean: np.ndarray, u: np.ndarray) -> _Axis:
        from scipy.special import ndtri

        return cls(float(mean.min()), float(mean.max()),
                   float(max(np.max(np.abs(ndtri(u))), 1e-3)))

    def t(self, basis: str, mean: np.ndarray, u: np.ndarray) -> np.ndarray:
        from scipy.special import ndtri

        if basis == "value":
            return to_unit(mean, self.low, self.high)
        if basis == "quantile":
            return 2 * u - 1
        return np.clip(ndtri(u) / self.z_max, -1.0, 1.0)


BASES = ("value", "quantile", "normal")


def _candidates(top: int) -> list[tuple[str, int]]:
    return [(b, d) for b in BASES for d in range(0 if b == "value" else 1, top + 1)]


def _design(basis: str, degree: int, axes: Sequence[_Axis],
            points: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    ts = [a.t(basis, m, u) for a, (m, u) in zip(axes, points, strict=True)]
    if len(ts) == 1:
        return legendre_design(ts[0], degree)
    return legendre_design_2d(ts[0], ts[1], degree)


def _fit_1d(spec: _Spec, xs: np.ndarray, ws: np.ndarray, xd: np.ndarray, discrete: bool
            ) -> BinnedCorrection:
    ok_s, ok_d = _valid(xs), _valid(xd)
    xs, ws, xd = xs[ok_s], ws[ok_s], xd[ok_d]
    if discrete:
        values = np.unique(np.concatenate([xd, xs]))
        mids = 0.5 * (values[1:] + values[:-1])
        edges = np.concatenate([[values[0] - 0.5], mids, [values[-1] + 0.5]])
        export = edges
    else:
        n_bins = int(np.clip(len(xd) // MIN_DATA_PER_BIN, 5, MAX_BINS_1D))
        edges = weighted_quantile_edges(xd, n_bins)
        export = weighted_quantile_edges(xd, min(EXPORT_BINS_1D, max(len(xd) // 20, n_bins)))
    n = len(edges) - 1
    ids = bin_index(edges, xs)
    sumw, sumw2 = np.bincount(ids, ws, n), np.bincount(ids, ws * ws, n)
    counts = np.bincount(bin_index(edges, xd), minlength=n).astype(float)
    ratio = binned_ratio(sumw, sumw2, counts)
    fit_points = [_grid(edges, xd)]
    export_points = [_grid(export, xd)]
    axes = [_Axis.of(*fit_points[0])]
    top = n - 1 if discrete else min(MAX_DEGREE_1D, n - 1)
    labels = [(b, d) for b, d in _candidates(top) if not (discrete and b != "value")]
    sim_export = np.bincount(bin_index(export, xs), ws, len(export) - 1)
    return _fit_and_export(spec, ratio, labels, axes, fit_points, export_points, (export,),
                           sim_export)


def _fit_2d(spec: _Spec, xs: np.ndarray, ys: np.ndarray, ws: np.ndarray, xd: np.ndarray,
            yd: np.ndarray) -> BinnedCorrection:
    ok_s, ok_d = _valid(xs) & _valid(ys), _valid(xd) & _valid(yd)
    xs, ys, ws, xd, yd = xs[ok_s], ys[ok_s], ws[ok_s], xd[ok_d], yd[ok_d]
    per_axis = int(np.clip(math.sqrt(len(xd) / MIN_DATA_PER_CELL), 3, MAX_BINS_2D))
    ex, ey = weighted_quantile_edges(xd, per_axis), weighted_quantile_edges(yd, per_axis)
    nx, ny = len(ex) - 1, len(ey) - 1
    cell_s = bin_index(ex, xs) * ny + bin_index(ey, ys)
    cell_d = bin_index(ex, xd) * ny + bin_index(ey, yd)
    sumw = np.bincount(cell_s, ws, nx * ny)
    sumw2 = np.bincount(cell_s, ws * ws, nx * ny)
    counts = np.bincount(cell_d, minlength=nx * ny).astype(float)
    ratio = binned_ratio(sumw, sumw2, counts)
    gx, gy = _grid(ex, xd), _grid(ey, yd)
    axes = [_Axis.of(*gx), _Axis.of(*gy)]

    def cells(px: tuple[np.ndarray, np.ndarray], py: tuple[np.ndarray, np.ndarray]
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        kx, ky = len(px[0]), len(py[0])
        return [(np.repeat(px[0], ky), np.repeat(px[1], ky)),
                (np.tile(py[0], kx), np.tile(py[1], kx))]

    ox, oy = (weighted_quantile_edges(v, EXPORT_BINS_2D) for v in (xd, yd))
    export_points = cells(_grid(ox, xd), _grid(oy, yd))
    sim_export = np.bincount(bin_index(ox, xs) * (len(oy) - 1) + bin_index(oy, ys), ws,
                             (len(ox) - 1) * (len(oy) - 1))
    return _fit_and_export(spec, ratio, _candidates(MAX_DEGREE_2D), axes, cells(gx, gy),
                           export_points, (ox, oy), sim_export)


def _fit_and_export(spec: _Spec, ratio: Any, labels: list[tuple[str, int]],
                    axes: Sequence[_Axis], fit_points: Sequence[tuple[np.ndarray, np.ndarray]],
                    export_points: Sequence[tuple[np.ndarray, np.ndarray]],
                    export_edges: tuple[np.ndarray, ...], sim_export: np.ndarray
                    ) -> BinnedCorrection:
    """Fit log(ratio) on the fit grid with every candidate basis (AIC), and evaluate the
    chosen fit on the (finer) exported binning: a smooth correction is written finely, so a
    piecewise-constant factor leaves little shape within its bins."""
    log_r = np.log(np.where(ratio.ratio > 0, ratio.ratio, 1.0))
    designs = [_design(b, d, axes, fit_points) for b, d in labels]
    fit = smooth_log_ratio(designs, log_r, ratio.sigma_log)
    basis, degree = labels[fit.degree]
    log_e, sigma_e = fit.at(_design(basis, degree, axes, export_points))
    nominal = np.exp(log_e)
    nominal = nominal * normalise_factors(nominal, sim_export)
    return BinnedCorrection(
        spec.name, spec.inputs, export_edges, nominal, nominal * np.exp(sigma_e),
        nominal * np.exp(-sigma_e), ratio.ratio, ratio.sigma,
        {"basis": basis, "degree": degree, "n_parameters": fit.n_parameters,
         "chi2": fit.chi2, "ndf": fit.ndf, "pvalue": fit.pvalue,
         "fit_bins": len(log_r)}, spec.reason)


def _derive_binned(specs: list[_Spec], sim: dict[str, np.ndarray], data: dict[str, np.ndarray],
                   kinds: Mapping[str, str]) -> list[BinnedCorrection]:
    """Every correction on the training half, raked together (module docstring)."""
    rounds = 1 if len(specs) == 1 else RAKING_ROUNDS
    factors = {s.name: np.ones(len(sim["_w"])) for s in specs}
    result: dict[str, BinnedCorrection] = {}
    for _ in range(rounds):
        for s in specs:
            others = np.prod([f for n, f in factors.items() if n != s.name], axis=0) \
                if len(specs) > 1 else 1.0
            w = sim["_w"] * others
            if len(s.inputs) == 1:
                c = _fit_1d(s, sim[s.inputs[0]], w, data[s.inputs[0]],
                            kinds.get(s.inputs[0]) == "discrete")
            else:
                x, y = s.inputs
                c = _fit_2d(s, sim[x], sim[y], w, data[x], data[y])
            result[s.name] = c
            factors[s.name] = c.evaluate([sim[n] for n in s.inputs])
    return [result[s.name] for s in specs]


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def derive_corrections(db: str | Path, run: str = "latest", method: str = "binned", *,
                       features: Sequence[str] = (), seed: int | None = None,
                       progress: Callable[[str, int, int], None] | None = None,
                       ) -> CorrectionResult:
    """Derive the corrections of a stored run (module docstring); nothing is written.

    ``features``: also correct these (1D) whether they fail or not (a null check).
    ``seed``: the classifier's (default: the run's)."""
    from validator.results.reading import read_run
    from validator.results.store import resolve_run
    from validator.results.tables import load_run_tables

    if method not in METHODS:
        raise InputError(f"--method {method}: one of {', '.join(METHODS)}")
    db = Path(db)
    run_id = resolve_run(db, run)
    reading = read_run(load_run_tables(db, run_id))
    config, row = _source_config(db, run_id)
    inputs = _rebuild_inputs(config, row.get("plan_json"))
    unknown = [f for f in features if f not in inputs.features]
    if unknown:
        raise InputError(f"--features: '{unknown[0]}' is not a feature of run {run_id} "
                         f"(its features: {', '.join(inputs.features[:12])})")
    seed = int(config.get("seed") or 0) if seed is None else seed
    feats, pairs, notes = failing_inputs(reading)
    if method == "classifier":
        notes = [n for n in notes if "--method classifier" not in n]
    meta: dict[str, Any] = {
        "source_run": run_id, "method": method,
        "split": {"key": "sha256(file name)[:6] and row in file, SplitMix64", "salt": SPLIT_SALT,
                  "derived_on": HALVES[0], "closure_on": HALVES[1]},
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(
            timespec="seconds"),
        "sim": list(config["sim"]), "data": list(config["data"]),
        "weight": config.get("weight"),
    }
    from validator import __version__

    meta["validator"] = __version__
    if method == "binned":
        specs, more = _specs(feats, pairs, features)
        notes += more
        meta["features"] = sorted({n for s in specs for n in s.inputs})
        if not specs:
            notes.append(f"run {run_id}: no feature or correlation fails in the inclusive "
                         "category: nothing to correct (name features with --features to "
                         "derive anyway)")
            return CorrectionResult(run_id, method, [], meta, notes)
        columns = sorted({n for s in specs for n in s.inputs})
        if progress:
            progress("read training half", 0, 2)
        sim = _read(inputs.sim, inputs.sim_chain, columns, inputs.chunk_rows, HALVES[0])
        data = _read(inputs.data, inputs.data_chain, columns, inputs.chunk_rows, HALVES[0])
        _check_sizes(sim, data, run_id)
        corrections = _derive_binned(specs, sim, data, inputs.kinds)
        meta["n_training"] = {"sim": len(sim["_w"]), "data": len(data["_w"])}
        return CorrectionResult(run_id, method, corrections, meta, notes)
    # classifier: every tested input at once
    columns = [f for f in inputs.features]
    meta["features"] = columns
    sim = _read(inputs.sim, inputs.sim_chain, columns, inputs.chunk_rows, None)
    data = _read(inputs.data, inputs.data_chain, columns, inputs.chunk_rows, HALVES[0])
    train = sim["_half"] == 0
    _check_sizes({"_w": sim["_w"][train]}, data, run_id)
    from validator.stats.reweight import classifier_density_ratio

    xs = np.stack([sim[c] for c in columns], axis=1)
    xd = np.stack([data[c] for c in columns], axis=1)
    pick_s = np.flatnonzero(train)[_subsample(int(train.sum()), CLASSIFIER_EVENTS, seed)]
    pick_d = _subsample(len(xd), CLASSIFIER_EVENTS, seed + 1)
    ratio = classifier_density_ratio(xs[pick_s], sim["_w"][pick_s], xd[pick_d], seed)
    nominal, up, down = ratio.evaluate(xs)
    import polars as pl

    keys = np.array([source_key(s) for s in inputs.sim.sources], dtype=object)
    events = pl.DataFrame({"file": keys[sim[FILE]].astype(str), "row": sim[ENTRY],
                           "half": np.array(HALVES, dtype=object)[sim["_half"]].astype(str),
                           "nominal": nominal, "up": up, "down": down})
    meta["n_training"] = {"sim": int(train.sum()), "data": len(xd)}
    meta["classifier"] = {k: v for k, v in ratio.info.items() if k != "cell_resampling"}
    notes.append(f"classifier: MLP {ratio.info['hidden']}, {ratio.info['epochs']} epochs on "
                 f"{len(pick_s):,} simulated and {len(pick_d):,} data events of the training "
                 f"half; calibrated on a third of them (degree {ratio.info['calibration_degree']}"
                 f"); factors clipped to [{1 / ratio.clip:g}, {ratio.clip:g}] "
                 f"({ratio.info['clipped_fraction']:.2%} of the events at the clip)")
    return CorrectionResult(run_id, method, [], meta, notes, events=events,
                            classifier=ratio.info)


def _check_sizes(sim: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
                 run_id: str) -> None:
    if len(data["_w"]) < 50 or not np.sum(sim["_w"]) > 0:
        raise InputError(f"run {run_id}: the training half holds {len(data['_w'])} data events "
                         f"and a simulation of sum of weights {float(np.sum(sim['_w'])):g}: "
                         "too few to derive a correction")


# ---------------------------------------------------------------------------------------------
# the summary and the table row


def summary_lines(result: CorrectionResult) -> list[str]:
    """One screen: what was corrected, how, and how far from 1 (consistency)."""
    meta = result.metadata
    n = meta.get("n_training", {})
    lines = [f"corrections of run {result.source_run} ({result.method}), derived on the "
             f"training half ({n.get('sim', 0):,} simulated, {n.get('data', 0):,} data "
             "events); close them on the held-out half:"]
    for c in result.corrections:
        chi2, ndf, p = c.consistency()
        fit = c.fit
        lines.append(
            f"  {' x '.join(c.inputs):<28} {c.reason:<18} {len(c.nominal):>3} bins, "
            f"factors {c.nominal.min():.3f}-{c.nominal.max():.3f}, fit: {fit['basis']} "
            f"degree {fit['degree']} (chi2/ndf {fit['chi2']:.1f}/{fit['ndf']}); vs 1: "
            f"chi2/ndf {chi2:.1f}/{ndf}, p = {p:.2g}, max |f-1|/sigma {c.max_pull():.1f}")
    if result.events is not None:
        f = result.events["nominal"].to_numpy()
        lines.append(f"  every input ({len(meta.get('features', []))}): factors per event, "
                     f"median {np.median(f):.3f}, 1-99% {np.quantile(f, 0.01):.3f}-"
                     f"{np.quantile(f, 0.99):.3f}")
    lines += [f"note: {n_}" for n_ in result.notes]
    if result.files:
        lines.append("written: " + ", ".join(str(p) for p in result.files)
                     + (f" (sha256 {result.sha256[:12]})" if result.sha256 else ""))
        lines.append(f"next: validator run ... --apply {result.files[0]} --rules "
                     "rules/default.yaml   (held-out half; --apply-half training beside it)")
    return lines


def correction_row(result: CorrectionResult) -> dict[str, Any]:
    """The ``corrections`` row of a derived correction (``run_id`` = the source run; a
    closure run's row: :func:`validator.results.rows.closure_rows`)."""
    meta = result.metadata
    return {"run_id": result.source_run, "role": "derived", "name": result.name,
            "source_run_id": result.source_run, "sha256": result.sha256,
            "path": str(result.files[0]) if result.files else None, "method": result.method,
            "features": list(meta.get("features", [])), "corrections": [
                c.name for c in result.corrections] or (["classifier"] if result.events
                                                        is not None else []),
            "derived_on": meta["split"]["derived_on"], "half": None,
            "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
            "details": json.dumps({"notes": result.notes, "fits": {
                c.name: c.fit for c in result.corrections},
                "classifier": result.classifier}, default=str)}


def correct(db: str | Path, run: str = "latest", out: str | Path | None = None,
            method: str = "binned", *, features: Sequence[str] = (), record: bool = True,
            seed: int | None = None) -> CorrectionResult:
    """``validator correct`` (the command and a notebook): derive, write ``out`` (when given
    and there is something to correct) and record the correction in the database's
    ``corrections`` table (``record``)."""
    result = derive_corrections(db, run, method, features=features, seed=seed)
    if out is not None and (result.corrections or result.events is not None):
        write_corrections(result, out)
        if record:
            from validator.results.store import save_corrections

            save_corrections(db, [correction_row(result)])
    return result
