"""The audited network: :func:`load_model` and :class:`AuditedModel`.

An :class:`AuditedModel` is a derived-column producer (the ``DerivedColumns`` protocol of
:mod:`validator.inputs.transform`): given a chunk it returns the network's outputs as float64
columns
(``output`` for one node, ``output_<node>`` for several), evaluated in batches; an event with a
NaN/inf input gets NaN outputs. See :mod:`validator.model.formats` for the formats read, the
refusal of pickles and the ``validator.json`` metadata document.

Preprocessing: ``scaler`` (per model input ``{"offset": o, "scale": s}``) maps a raw value
``x`` to ``(x - o) / s`` before the network, for networks exported without their
standardisation. Derivatives (:mod:`validator.model.taylor`) are taken with respect to the raw
inputs, through the scaler.

Parametric networks (PNNs; Baldi et al., "Parameterized neural networks for high-energy
physics", Eur. Phys. J. C 76 (2016) 235, arXiv:1601.07913): one model input is the signal
hypothesis (e.g. a mass), which is not a column of the data. ``params={"mass": [300, 500]}``
declares it and the grid to audit; :meth:`AuditedModel.at` fixes its value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from validator.errors import InputError
from validator.model.formats import (
    METADATA_KEY,
    Backend,
    load_onnx,
    load_pt2,
    load_torchscript,
    onnx_to_torch,
    sniff,
)

#: Kinds of network.
KINDS = ("binary", "multiclass", "regression")
#: Methods of differentiation (``AuditedModel.derivative_method``).
DERIVATIVE_METHODS = ("autograd", "onnx2torch", "finite_differences")

_PROBE_ROWS = 256


#: Events per evaluation batch: a batch's activations stay in the core's cache. Measured on
#: the 30-64-64-1 MLP (TorchScript, one thread, 2 MiB L2): 0.48 core-s per million events at
#: 4,096-8,192, 0.58 at 16,384, 0.65 at 65,536, and 110 MB less memory than at 65,536.
EVALUATION_BATCH = 8_192
#: Rows of the inputs' matrix written at once from a chunk's columns: a block of float64 rows
#: (1 MB at 30 inputs) stays in the core's cache while each column is written into it, where a
#: whole chunk's matrix is written column by column through memory (measured, 30 float32
#: columns: 0.06 us an event against 0.25 for ``column_stack``, and the network's inputs 0.12
#: against 0.53 from a matrix).
INPUT_BLOCK_ROWS = 4_096


@dataclass(frozen=True, eq=False)
class AuditedModel:
    """A loaded network with its input names, kind, outputs and fixed parameter values.

    Attributes: ``path``, ``format`` (``"torchscript"``, ``"torch.export"``, ``"onnx"``),
    ``sha256`` (of the file: the model id), ``model_inputs`` (the network's input order,
    parameters included), ``inputs`` (the data columns it reads: ``model_inputs`` without the
    parameters), ``nodes`` (one label per output node), ``kind``, ``params`` (parameter ->
    audit grid), ``param_values`` (fixed values), ``scaler`` (model input -> (offset, scale)),
    ``derivative_method`` and ``notes``.
    """

    path: Path
    format: str
    sha256: str
    model_inputs: tuple[str, ...]
    inputs: tuple[str, ...]
    nodes: tuple[str, ...]
    kind: str
    params: dict[str, tuple[float, ...]]
    param_values: dict[str, float]
    scaler: dict[str, tuple[float, float]]
    derivative_method: str
    notes: tuple[str, ...] = ()
    batch_size: int = EVALUATION_BATCH
    tagged: bool = False
    _backend: Backend | None = field(default=None, repr=False)

    # -- the DerivedColumns protocol --------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Output column names: ``output`` or ``output_<node>`` (plus ``_<param><value>`` for
        a model fixed with ``at(..., tag=True)``)."""
        base = ("output",) if len(self.nodes) == 1 else tuple(f"output_{n}" for n in self.nodes)
        return tuple(f"{b}{self.tag}" for b in base)

    @property
    def tag(self) -> str:
        """The suffix of a tagged parametric point's names (``_mass300``), else ``""``."""
        if not self.tagged:
            return ""
        return "_" + "_".join(f"{p}{_value_label(v)}" for p, v in self.param_values.items())

    @property
    def param_label(self) -> str | None:
        """The fixed parameter values as ``mass=300`` (``a=1,b=2``); None when there are
        none."""
        if not self.param_values:
            return None
        return ",".join(f"{p}={v:g}" for p, v in self.param_values.items())

    def __call__(self, chunk: Mapping[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        """The outputs for the events of ``chunk`` (float64, NaN where an input is NaN/inf)."""
        out = self.evaluate(chunk, _label=label)
        return {name: np.ascontiguousarray(out[:, k]) for k, name in enumerate(self.names)}

    # -- parameters -------------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        return len(self.nodes)

    @property
    def is_fixed(self) -> bool:
        """True when every parameter has a value (always for a non-parametric network)."""
        return all(p in self.param_values for p in self.params)

    def at(self, *value: float, tag: bool = False, **values: float) -> AuditedModel:
        """The network at fixed parameter values: ``at(500)`` (one parameter) or
        ``at(mass=500)``. With ``tag=True`` the output names carry the value
        (``output_mass500``), so several points can be derived side by side."""
        if value:
            if len(value) != 1 or len(self.params) != 1 or values:
                raise InputError(f"model {self.path.name}: give parameter values by name "
                                 f"({', '.join(self.params) or 'it has no parameters'})")
            values = {next(iter(self.params)): value[0]}
        fixed = dict(self.param_values)
        for name, v in values.items():
            if name not in self.params:
                raise InputError(f"model {self.path.name}: '{name}' is not a parameter of the "
                                 f"network (parameters: {', '.join(self.params) or 'none'})")
            if not math.isfinite(float(v)):
                raise InputError(f"model {self.path.name}: parameter {name}={v} is not finite")
            fixed[name] = float(v)
        return replace(self, param_values={p: fixed[p] for p in self.params if p in fixed},
                       tagged=tag)

    def grid(self, tag: bool = True) -> tuple[AuditedModel, ...]:
        """The network at every point of the parameter grid (itself when not parametric)."""
        if not self.params:
            return (self,)
        names = list(self.params)
        return tuple(self.at(tag=tag, **dict(zip(names, point, strict=True)))
                     for point in itertools.product(*(self.params[n] for n in names)))

    # -- evaluation -------------------------------------------------------------------------

    def matrix(self, x: Mapping[str, np.ndarray] | np.ndarray, label: str = "") -> np.ndarray:
        """Inputs as a float64 matrix ``(n, len(inputs))`` from a chunk or an array."""
        if isinstance(x, Mapping):
            self.check_chunk(x, label)
            if not self.inputs:
                return np.zeros((0, 0))
            columns = [np.asarray(x[c]) for c in self.inputs]
            out = np.empty((len(columns[0]), len(columns)))
            for start in range(0, len(out), INPUT_BLOCK_ROWS):
                rows = slice(start, start + INPUT_BLOCK_ROWS)
                _write_rows(out[rows], columns, rows)
            return out
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 1 and len(self.inputs) == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != len(self.inputs):
            raise ValueError(f"expected an array (n, {len(self.inputs)}) of {self.inputs}, got "
                             f"shape {arr.shape}")
        return arr

    def check_chunk(self, chunk: Mapping[str, np.ndarray], label: str = "") -> None:
        """InputError naming the first input of the network that ``chunk`` lacks."""
        missing = [c for c in self.inputs if c not in chunk]
        if missing:
            where = f"{label}: " if label else ""
            raise InputError(f"{where}model {self.path.name} needs column '{missing[0]}', "
                             "which is not in the sample")

    def check_columns(self, columns: Iterable[str], label: str) -> None:
        """InputError naming the first input of the network that is not among ``columns``."""
        have = set(columns)
        for c in self.inputs:
            if c not in have:
                raise InputError(f"{label}: model {self.path.name} needs column '{c}', which "
                                 "is not in the sample")

    def _require_fixed(self, label: str = "") -> None:
        if not self.is_fixed:
            free = [p for p in self.params if p not in self.param_values]
            where = f"{label}: " if label else ""
            raise InputError(f"{where}model {self.path.name} is parametric ({', '.join(free)} "
                             "is an input that is not in the data): evaluate it at fixed "
                             "values with .at()")

    def _affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``z = (x @ S + c - offset) / scale``: selection S (N, M), raw parameter row c (M,),
        offset and scale (M,)."""
        pos = {n: i for i, n in enumerate(self.model_inputs)}
        sel = np.zeros((len(self.inputs), len(self.model_inputs)))
        for k, name in enumerate(self.inputs):
            sel[k, pos[name]] = 1.0
        const = np.zeros(len(self.model_inputs))
        for name, v in self.param_values.items():
            const[pos[name]] = v
        offset = np.array([self.scaler.get(n, (0.0, 1.0))[0] for n in self.model_inputs])
        scale = np.array([self.scaler.get(n, (0.0, 1.0))[1] for n in self.model_inputs])
        return sel, const, offset, scale

    def model_space(self, x: np.ndarray) -> np.ndarray:
        """Model-space inputs ``(n, len(model_inputs))``: parameters inserted, scaler applied."""
        sel, const, offset, scale = self._affine()
        return (x @ sel + const - offset) / scale

    def network_inputs(self, x: Mapping[str, np.ndarray] | np.ndarray, label: str = ""
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The network's inputs in its own precision ``(n, len(model_inputs))``, and which
        rows have every input finite. Element for element :meth:`model_space` cast to the
        network's type (S only places columns, so ``x @ S`` is exact; each input is scaled
        in float64), without the float64 matrix of the whole chunk and its product: a block
        of :data:`INPUT_BLOCK_ROWS` rows at a time."""
        self._require_fixed(label)
        if isinstance(x, Mapping):
            self.check_chunk(x, label)
            columns = [np.asarray(x[c]) for c in self.inputs]
            n = len(columns[0]) if columns else 0
            matrix = None
        else:
            matrix = self.matrix(x)
            n = len(matrix)
        _, const, offset, scale = self._affine()
        pos = {name: i for i, name in enumerate(self.model_inputs)}
        placed = np.array([pos[name] for name in self.inputs], dtype=np.intp)
        in_order = np.array_equal(placed, np.arange(len(self.model_inputs)))
        z = np.empty((n, len(self.model_inputs)), dtype=self._backend.dtype)
        if not in_order:
            z[:] = ((const - offset) / scale).astype(z.dtype)  # the parameters' columns
        good = np.ones(n, dtype=bool)
        if not len(placed):
            return z, good
        block = np.empty((min(n, INPUT_BLOCK_ROWS), len(placed)))
        for start in range(0, n, INPUT_BLOCK_ROWS):
            rows = slice(start, min(start + INPUT_BLOCK_ROWS, n))
            xb = block[:rows.stop - start]
            if matrix is not None:
                xb[:] = matrix[rows]
            else:
                _write_rows(xb, columns, rows)
            finite = np.isfinite(xb)
            if not finite.all():  # a reduction per row only where a value is not finite
                good[rows] = finite.all(axis=1)
            xb -= offset[placed]
            xb /= scale[placed]
            if in_order:
                z[rows] = xb
            else:
                z[rows, placed] = xb
        return z, good

    def evaluate(self, x: Mapping[str, np.ndarray] | np.ndarray, *, _label: str = ""
                 ) -> np.ndarray:
        """Outputs ``(n, n_outputs)`` (float64) for inputs ``(n, len(inputs))`` or a chunk;
        rows with a NaN/inf input give NaN."""
        z, good = self.network_inputs(x, _label)
        out = np.full((len(z), self.n_outputs), np.nan)
        rows = np.arange(len(z)) if good.all() else np.flatnonzero(good)
        z = z if len(rows) == len(z) else z[rows]  # every row good: batches are views
        out[rows] = self.run_network(z)
        return out

    def run_network(self, z: np.ndarray) -> np.ndarray:
        """The network on model-space rows ``z`` (:meth:`network_inputs`), ``(n, n_outputs)``
        float64, in batches of ``batch_size`` rows (:data:`EVALUATION_BATCH`: a batch's
        activations stay in cache; SHAP's 262,144-row calls cost 0.95 us a row whole against
        0.55 in batches)."""
        if not len(z):  # no event with finite inputs (a backend gives (0, 0) for none)
            return np.zeros((0, self.n_outputs))
        if len(z) <= self.batch_size:
            return self._backend.run(z)
        return np.concatenate([self._backend.run(z[s:s + self.batch_size])
                               for s in range(0, len(z), self.batch_size)])

    def torch_forward(self):
        """A differentiable torch function of the raw inputs (float64 ``(B, N)``) -> outputs
        ``(B, C)``, scaler and parameters included (the affine map runs in float64, the
        network in its own precision); None when only finite differences are available."""
        self._require_fixed()
        if self.derivative_method == "finite_differences":
            return None
        net = self._backend.torch_forward()
        import torch

        tdtype = torch.float64 if self._backend.dtype == np.float64 else torch.float32
        sel, const, offset, scale = (torch.as_tensor(a, dtype=torch.float64)
                                     for a in self._affine())

        def fn(x):
            return net(((x.to(torch.float64) @ sel + const - offset) / scale).to(tdtype))
        return fn

    # -- description ------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the ``models`` table stores about the network."""
        return {"model_id": self.sha256, "path": str(self.path), "format": self.format,
                "kind": self.kind, "inputs": list(self.model_inputs),
                "outputs": list(self.names), "params": {k: list(v) for k, v in
                                                        self.params.items()},
                "param_values": dict(self.param_values),
                "derivative_method": self.derivative_method}

    def __reduce__(self):  # for worker processes: reload (and re-check) the file by path
        spec = {"path": str(self.path), "inputs": list(self.model_inputs),
                "scaler": {k: {"offset": o, "scale": s} for k, (o, s) in self.scaler.items()},
                "kind": self.kind, "params": {k: list(v) for k, v in self.params.items()},
                "param_values": self.param_values, "tagged": self.tagged,
                "sha256": self.sha256, "batch_size": self.batch_size,
                "finite_differences": self.derivative_method == "finite_differences"}
        return (_reload, (spec,))


def _write_rows(block: np.ndarray, columns: list[np.ndarray], rows: slice) -> None:
    """Rows ``rows`` of ``columns`` into ``block`` (float64, a column of it per column): the
    block stays in cache while every column is written into it (:data:`INPUT_BLOCK_ROWS`)."""
    for j, column in enumerate(columns):
        block[:, j] = column[rows]


#: Networks a worker process has loaded, by their pickled spec (:meth:`AuditedModel.__reduce__`),
#: with the file's (size, mtime) when loaded: a run sends the network with every scan and fill
#: task, and loading a TorchScript archive costs ~0.25 s (16 tasks of a 1M audited run: 4 s).
_RELOADED: dict[str, tuple[tuple[int, int], AuditedModel]] = {}


def _file_stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _reload(spec: dict[str, Any]) -> AuditedModel:
    """The network of ``spec`` in this process: loaded (and its digest checked) once, again
    only when the file's size or modification time changed since."""
    key = json.dumps(spec, sort_keys=True)
    cached = _RELOADED.get(key)
    if cached is not None:
        try:
            if cached[0] == _file_stamp(spec["path"]):
                return cached[1]
        except OSError:
            pass  # gone: load_model says so
    model = _load_spec(spec)
    _RELOADED[key] = (_file_stamp(spec["path"]), model)
    return model


def _load_spec(spec: dict[str, Any]) -> AuditedModel:
    model = load_model(spec["path"], inputs=spec["inputs"], scaler=spec["scaler"] or None,
                       kind=spec["kind"], params=spec["params"] or None,
                       batch_size=spec["batch_size"],
                       derivatives="finite_differences" if spec["finite_differences"]
                       else "auto")
    if model.sha256 != spec["sha256"]:
        raise InputError(f"model {spec['path']} changed on disk while it was being audited")
    if spec["param_values"]:
        model = model.at(tag=spec["tagged"], **spec["param_values"])
    return model


def _value_label(v: float) -> str:
    text = f"{v:g}"
    return text.replace("-", "m").replace(".", "p").replace("+", "")


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _names(value: Any, path: Path, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"model {path}: {what} must be a list of names")
    dup = [v for v in value if list(value).count(v) > 1]
    if dup:
        raise InputError(f"model {path}: {what} name '{dup[0]}' appears twice")
    return tuple(value)


def _scaler(value: Any, model_inputs: tuple[str, ...], path: Path
            ) -> dict[str, tuple[float, float]]:
    if value is None:
        return {}
    if isinstance(value, (str, Path)):
        spath = Path(value)
        try:
            value = json.loads(spath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"scaler {spath}: cannot read it as JSON ({exc})") from exc
    if not isinstance(value, Mapping):
        raise InputError(f"model {path}: the scaler must map input names to "
                         "{\"offset\": o, \"scale\": s}")
    out = {}
    for name, spec in value.items():
        if name not in model_inputs:
            raise InputError(f"model {path}: scaler input '{name}' is not an input of the "
                             f"model ({', '.join(model_inputs)})")
        try:
            offset, scale = float(spec.get("offset", 0.0)), float(spec.get("scale", 1.0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(f"model {path}: scaler of '{name}' must be "
                             "{\"offset\": o, \"scale\": s}") from exc
        if not (math.isfinite(offset) and math.isfinite(scale)) or scale == 0.0:
            raise InputError(f"model {path}: scaler of '{name}' needs a finite offset and a "
                             f"finite non-zero scale (got {offset}, {scale})")
        out[name] = (offset, scale)
    return out


def _params(value: Any, model_inputs: tuple[str, ...], path: Path
            ) -> dict[str, tuple[float, ...]]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"model {path}: params must map a parameter to its values")
    out = {}
    for name, grid in value.items():
        if name not in model_inputs:
            raise InputError(f"model {path}: parameter '{name}' is not an input of the model "
                             f"({', '.join(model_inputs)})")
        grid = [grid] if isinstance(grid, (int, float)) else list(grid)
        try:
            vals = tuple(float(v) for v in grid)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model {path}: parameter '{name}' values must be numbers") \
                from exc
        if not vals or not all(math.isfinite(v) for v in vals):
            raise InputError(f"model {path}: parameter '{name}' needs finite values")
        out[name] = vals
    return out


def infer_kind(outputs: np.ndarray) -> str:
    """``binary`` (one node in [0, 1]), ``multiclass`` (several non-negative nodes summing to
    1, a softmax) or ``regression`` (anything else), from outputs on probe inputs."""
    finite = outputs[np.isfinite(outputs).all(axis=1)]
    if len(finite) == 0:
        return "regression"
    if finite.shape[1] == 1:
        return "binary" if ((finite >= 0) & (finite <= 1)).all() else "regression"
    if (finite >= -1e-6).all() and np.allclose(finite.sum(axis=1), 1.0, atol=1e-4):
        return "multiclass"
    return "regression"


def load_model(path: str | Path, inputs: Sequence[str] | str | None = None,
               scaler: Mapping[str, Mapping[str, float]] | str | Path | None = None,
               kind: str | None = None, *,
               params: Mapping[str, Sequence[float] | float] | None = None,
               batch_size: int = EVALUATION_BATCH, derivatives: str = "auto") -> AuditedModel:
    """Load a network for auditing (TorchScript, ``torch.export`` ``.pt2`` or ONNX; never a
    pickle, see :mod:`validator.model.formats`).

    ``inputs``: the model's input names in order (parameters included), overriding those
    stored in the model; ``scaler``: per-input ``{"offset", "scale"}`` (or a JSON file of it);
    ``kind``: ``binary`` | ``multiclass`` | ``regression`` (inferred from the outputs on probe
    inputs otherwise); ``params``: parametric inputs and their audit grid;
    ``derivatives="finite_differences"`` skips the ONNX -> torch conversion.
    Every problem is an :class:`~validator.errors.InputError` naming the file.
    """
    path = Path(path)
    fmt = sniff(path)
    digest = sha256_of(path)
    backend = {"torchscript": load_torchscript, "torch.export": load_pt2,
               "onnx": load_onnx}[fmt](path)
    meta = backend.meta
    notes = list(backend.notes)

    if inputs is not None:
        names, source = _names(inputs, path, "inputs"), "given"
    elif "inputs" in meta:
        names, source = _names(meta["inputs"], path, "stored inputs"), "stored in the model"
    elif backend.input_names is not None:
        names, source = backend.input_names, "the ONNX input names"
    else:
        raise InputError(f"model {path}: its input names are unknown: store them in the model "
                         f"({METADATA_KEY} {{\"inputs\": [...]}}, or ONNX metadata "
                         "input_names) or give them (--model-inputs a,b,c)")
    if backend.width is not None and backend.width != len(names):
        raise InputError(f"model {path} takes {backend.width} inputs but {len(names)} names "
                         f"are {source} ({', '.join(names)})")

    rng = np.random.default_rng(20180823)
    probe = rng.standard_normal((_PROBE_ROWS, len(names)))
    from validator.model.formats import first_line, read_errors

    try:
        probe_out = backend.run(probe)
    except read_errors() as exc:

        raise InputError(f"model {path} does not run on {len(names)} inputs "
                         f"({', '.join(names)}): {first_line(exc)}") from exc
    n_out = probe_out.shape[1]
    if probe_out.shape[0] != _PROBE_ROWS or n_out == 0:
        raise InputError(f"model {path}: gives {probe_out.shape} outputs for "
                         f"{_PROBE_ROWS} events")

    if "outputs" in meta:
        nodes = _names(meta["outputs"], path, f"{METADATA_KEY} 'outputs'")
        if len(nodes) != n_out:
            raise InputError(f"model {path} has {n_out} output nodes but {len(nodes)} output "
                             f"names are stored ({', '.join(nodes)})")
    else:
        nodes = ("",) if n_out == 1 else tuple(str(i) for i in range(n_out))

    kind = kind if kind is not None else meta.get("kind")
    if kind is None:
        kind = infer_kind(probe_out)
    if kind not in KINDS:
        raise InputError(f"model {path}: kind '{kind}' is not one of {', '.join(KINDS)}")
    if kind == "binary" and n_out > 2:
        raise InputError(f"model {path} has {n_out} output nodes: not a binary classifier")
    if kind == "multiclass" and n_out < 2:
        raise InputError(f"model {path} has one output node: not a multi-class classifier")

    pars = _params(params if params is not None else meta.get("params"), names, path)
    scal = _scaler(scaler if scaler is not None else meta.get("scaler"), names, path)

    if derivatives not in ("auto", "finite_differences"):
        raise ValueError(f"derivatives must be 'auto' or 'finite_differences', not "
                         f"{derivatives!r}")
    if derivatives == "finite_differences":
        method = "finite_differences"
    elif fmt == "onnx":
        module, note = onnx_to_torch(backend, probe)
        backend.grad_module = module
        method = "onnx2torch" if module is not None else "finite_differences"
        if module is None:
            notes.append(note)
    else:
        method = "autograd"

    return AuditedModel(path=path, format=fmt, sha256=digest, model_inputs=names,
                        inputs=tuple(n for n in names if n not in pars), nodes=nodes,
                        kind=kind, params=pars, param_values={}, scaler=scal,
                        derivative_method=method, notes=tuple(notes),
                        batch_size=int(batch_size), _backend=backend)
