"""How a run's features are shown: axis labels, units, scales and ranges per feature, and the
experiment label of every figure (``display:`` and ``experiment_label:`` in a run
configuration, ``--display`` and ``--experiment-label`` on the command line).

The settings are stored with the run (in ``runs.config_json``), so the report and the
dashboard of a stored run draw ``$p_T^{miss}$ [GeV]`` years later without the configuration
file. A feature without a ``label`` takes the title of its ROOT branch where it has a
descriptive one (:func:`with_branch_titles`). The experiment label is drawn with
``mplhep.label.exp_label`` (https://mplhep.readthedocs.io/en/latest/api.html: ``exp``,
``text``, ``data``, ``lumi``, ``com``, ``year``).

Command-line forms (repeatable): ``--display met:label='$p_T^{miss}$' --display met:unit=GeV
--display met:logy=true --display m_ll:range=50,130`` and ``--experiment-label
text='Private Work' --experiment-label com=13.6``. Nothing here imports matplotlib.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from validator.errors import InputError

#: The keys of one feature's display settings.
DISPLAY_KEYS = ("label", "unit", "logx", "logy", "range")
#: The keys of the experiment label (the arguments of ``mplhep.label.exp_label``, ``exp``
#: named ``experiment``).
LABEL_KEYS = ("experiment", "text", "data", "lumi", "com", "year")
#: A ROOT branch title longer than this is a description, not an axis label (NanoAOD's
#: "slimmedMETs, type-1 corrected PF MET, after ..." would run off the axis): not used.
MAX_TITLE_LABEL = 40
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureDisplaySpec(_Strict):
    """One feature's display settings in a configuration file."""

    label: str | None = Field(None, description="axis label (matplotlib mathtext, e.g. "
                                                "'$p_T^{miss}$')")
    unit: str | None = Field(None, description="unit, written as [unit] after the label")
    logx: bool | None = Field(None, description="logarithmic x axis")
    logy: bool | None = Field(None, description="logarithmic y axis (default: automatic, "
                                                "when the distribution spans more than two "
                                                "decades)")
    range: tuple[float, float] | None = Field(None, description="x range drawn [low, high]")


class ExperimentLabelSpec(_Strict):
    """The experiment label of every figure in a configuration file (what is left out takes
    the defaults of :class:`ExperimentLabel`)."""

    experiment: str | None = Field(None, description="experiment name, bold (default CMS; "
                                                     "ATLAS, LHCb, ALICE, or any text)")
    text: str | None = Field(None, description="e.g. 'Private Work', 'Preliminary'")
    data: bool | None = Field(None, description="false: 'Simulation' is added (default "
                                                "true)")
    lumi: float | None = Field(None, description="integrated luminosity in fb^-1")
    com: float | None = Field(None, description="centre-of-mass energy in TeV")
    year: str | None = Field(None, description="year or era shown with the luminosity")


@dataclass(frozen=True)
class FeatureDisplay:
    """How one feature is drawn; None: the figure decides (the name, linear x, automatic y,
    the binning's range)."""

    label: str | None = None
    unit: str | None = None
    logx: bool | None = None
    logy: bool | None = None
    range: tuple[float, float] | None = None

    def axis_label(self, name: str) -> str:
        """``label [unit]`` (the feature's name without a label)."""
        text = self.label or name
        return f"{text} [{self.unit}]" if self.unit else text


@dataclass(frozen=True)
class ExperimentLabel:
    """The experiment label (``mplhep.label.exp_label``'s arguments)."""

    experiment: str = "CMS"
    text: str = ""
    data: bool = True
    lumi: float | None = None
    com: float | None = None
    year: str | None = None


def _bool(text: str, what: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise InputError(f"{what}: '{text}' is not true or false")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what}: '{text}' is not a number") from None


def parse_display(texts: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``FEATURE:KEY=VALUE`` texts (``--display``) as {feature: {key: value}}, checked."""
    out: dict[str, dict[str, Any]] = {}
    for text in texts or ():
        feature, colon, setting = text.partition(":")
        key, eq, value = setting.partition("=")
        feature, key = feature.strip(), key.strip()
        if not colon or not eq or not feature or key not in DISPLAY_KEYS:
            raise InputError(f"--display: '{text}' is not FEATURE:KEY=VALUE with KEY one of "
                             f"{', '.join(DISPLAY_KEYS)}")
        what = f"--display {feature}:{key}"
        parsed: Any
        if key in ("logx", "logy"):
            parsed = _bool(value, what)
        elif key == "range":
            parts = [p for p in value.replace(" ", "").split(",") if p]
            if len(parts) != 2:
                raise InputError(f"{what}: '{value}' is not LOW,HIGH")
            low, high = (_number(p, what) for p in parts)
            if not low < high:
                raise InputError(f"{what}: {low:g} is not below {high:g}")
            parsed = [low, high]
        else:
            parsed = value
        out.setdefault(feature, {})[key] = parsed
    return out


def display_texts(value: Mapping[str, FeatureDisplaySpec] | list[str], _base: Any = None,
                  ) -> list[str]:
    """A configuration file's ``display:`` mapping in the command line's form."""
    if isinstance(value, list):
        return list(value)
    out = []
    for feature, spec in value.items():
        for key in DISPLAY_KEYS:
            v = getattr(spec, key)
            if v is None:
                continue
            if key == "range":
                v = f"{v[0]:g},{v[1]:g}"
            elif isinstance(v, bool):
                v = str(v).lower()
            out.append(f"{feature}:{key}={v}")
    return out


def parse_experiment_label(texts: Sequence[str] | None) -> dict[str, Any] | None:
    """``KEY=VALUE`` texts (``--experiment-label``) as a checked mapping (None: no label)."""
    if not texts:
        return None
    out: dict[str, Any] = {}
    for text in texts:
        key, eq, value = text.partition("=")
        key = key.strip()
        if not eq or key not in LABEL_KEYS:
            raise InputError(f"--experiment-label: '{text}' is not KEY=VALUE with KEY one of "
                             f"{', '.join(LABEL_KEYS)}")
        what = f"--experiment-label {key}"
        out[key] = (_bool(value, what) if key == "data" else
                    _number(value, what) if key in ("lumi", "com") else value)
    return out


def experiment_label_texts(value: ExperimentLabelSpec | list[str], _base: Any = None,
                           ) -> list[str]:
    """A configuration file's ``experiment_label:`` mapping in the command line's form."""
    if isinstance(value, list):
        return list(value)
    out = []
    for key in LABEL_KEYS:
        v = getattr(value, key)
        if v is None:
            continue
        out.append(f"{key}={str(v).lower() if isinstance(v, bool) else v}")
    return out


def title_label(name: str, title: str | None) -> dict[str, str]:
    """Display settings from a ROOT branch title: none for an empty title, the leaf list
    ROOT writes by default (``met/D``, ``Jet_pt[nJet]/F``), the name itself or a long
    description (:data:`MAX_TITLE_LABEL`); else the label, and the unit of a trailing
    ``[GeV]`` or ``(GeV)``. ROOT's TLatex (``#eta``, ``p_{T}``) becomes mathtext."""
    title = (title or "").strip()
    if not title or re.fullmatch(r"[\w.\[\]]+/[A-Za-z]", title) \
            or len(title) > MAX_TITLE_LABEL or name.lower().endswith(title.lower()):
        return {}  # NanoAOD's "pt" of MET_pt says less than the name
    out: dict[str, str] = {}
    unit = re.search(r"\s*[\[(]([^\[\]()\s]{1,10})[\])]\s*$", title)
    if unit and unit.start() > 0:
        out["unit"] = unit.group(1).strip()
        title = title[:unit.start()].strip()
    if "#" in title or "_{" in title or "^{" in title:
        title = "$" + re.sub(r"#([A-Za-z]+)", r"\\\1", title).replace("$", "") + "$"
    out["label"] = title
    return out


def with_branch_titles(display: Mapping[str, Mapping[str, Any]],
                       titles: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The configured display settings, completed from ROOT branch titles: a feature's
    configured keys win; a title fills its label (and unit) where none is configured."""
    out = {f: dict(v) for f, v in display.items()}
    for name, title in titles.items():
        found = title_label(name, title)
        mine = out.get(name, {})
        if found and "label" not in mine:
            out[name] = {**found, **mine}
    return out


@dataclass(frozen=True)
class RunDisplay:
    """A stored run's display settings: per feature, and the experiment label."""

    features: Mapping[str, FeatureDisplay]
    experiment: ExperimentLabel | None = None

    def of(self, feature: str) -> FeatureDisplay:
        """The feature's settings (the defaults when none was given)."""
        return self.features.get(feature, FeatureDisplay())

    def axis_label(self, feature: str) -> str:
        return self.of(feature).axis_label(feature)


def feature_display(value: Mapping[str, Any]) -> FeatureDisplay:
    """One feature's stored settings as a :class:`FeatureDisplay` (unknown keys ignored)."""
    rng = value.get("range")
    return FeatureDisplay(
        label=value.get("label"), unit=value.get("unit"),
        logx=value.get("logx"), logy=value.get("logy"),
        range=(float(rng[0]), float(rng[1])) if rng is not None and len(rng) == 2 else None)


def run_display(config: Mapping[str, Any] | str | None) -> RunDisplay:
    """The display settings of a run from its stored configuration (``runs.config_json``, a
    JSON text or its parsed mapping); empty for a run stored before they existed."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if not isinstance(config, Mapping):
        return RunDisplay({})
    features = {str(f): feature_display(v) for f, v in (config.get("display") or {}).items()
                if isinstance(v, Mapping)}
    raw = config.get("experiment_label")
    experiment = None
    if isinstance(raw, Mapping):
        known = {k: raw[k] for k in LABEL_KEYS if raw.get(k) is not None}
        experiment = ExperimentLabel(**known)
    return RunDisplay(features, experiment)
