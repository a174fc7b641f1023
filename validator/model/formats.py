"""Reading model files without unpickling: format sniffing and the three safe loaders.

Formats read (and nothing else):

* **TorchScript** (``torch.jit.script``/``torch.jit.trace`` + ``torch.jit.save``): a zip archive
  ``<name>/code/...``, ``<name>/constants.pkl``, ``<name>/data.pkl``. ``torch.jit.load`` reads
  its ``.pkl`` records with TorchScript's own C++ unpickler, which builds tensors and
  TorchScript classes compiled from ``code/`` and cannot call Python functions (an unknown
  ``GLOBAL`` is an error), so a crafted archive cannot run Python code.
* **torch.export** archives (``torch.export.save``, ``.pt2``). ``torch.export.load`` is *not*
  used: it unpickles the archive's sample inputs (falling back to ``weights_only=False``),
  pickled weights and opaque constants, executes the archive's ``guards_code`` and loads
  AOTInductor shared libraries. :func:`load_pt2` reads the archive itself: it refuses any
  pickled payload or compiled code, skips the sample inputs, drops the serialized guards,
  allows only plain symbolic-shape expressions (they go through ``sympy.sympify``) and, after
  deserialising the graph, only calls of registered torch operators (``torch.ops.*``) and
  ``operator``/``math``/``torch.sym_*`` functions.
* **ONNX** (``torch.onnx.export``, how CMS and ATLAS deploy networks): protobuf, run with
  onnxruntime.

Anything else is refused with an :class:`~validator.errors.InputError`. A Python pickle
(``torch.save`` of a module or a state dict, ``pickle.dump``, ``joblib``) is recognised
*without reading it as a pickle*: by the zip layout of ``torch.save`` (``data.pkl`` without
TorchScript's ``code/``), by the pickle protocol header ``0x80 0x02..0x05``, or by a pickle file
name (``.pkl``, ``.pickle``, ``.pt``, ``.pth``, ``.joblib``, ``.sav``, ``.bin``, ``.ckpt``) on a
file that is neither a TorchScript/torch.export archive nor parses as ONNX; the one-line
message says how to export the model instead. What remains trusted: torch's C++ TorchScript
reader and torch.export graph deserialiser, and the onnx/onnxruntime protobuf readers.

Model metadata (input names, output names, kind, parameters, scaler) travel in a small JSON
document, :data:`METADATA_KEY` = ``validator.json``::

    {"inputs": ["pt_1", "eta_1", "mass"],          # model input order (required)
     "outputs": ["dy", "tt", "other"],              # node names -> output_dy, ... (optional)
     "kind": "multiclass",                          # binary | multiclass | regression (opt.)
     "params": {"mass": [300, 500, 700]},           # parametric inputs, audit grid (opt.)
     "scaler": {"pt_1": {"offset": 50.0, "scale": 20.0}}}   # applied before the model (opt.)

stored as ``torch.jit.save(m, path, _extra_files={"validator.json": text})``, as
``torch.export.save(ep, path, extra_files={"validator.json": text})``, or in ONNX
``metadata_props`` under the key ``validator.json`` (ONNX may instead carry ``input_names`` /
``output_names`` keys holding JSON lists).
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validator.errors import InputError

#: Name of the metadata document in TorchScript/torch.export extra files and ONNX metadata.
METADATA_KEY = "validator.json"


def read_errors() -> tuple[type[BaseException], ...]:
    """What the libraries reading a model file raise on a file they cannot read: torch's
    RuntimeError, protobuf's DecodeError (onnx), onnxruntime's Fail, InvalidArgument,
    InvalidProtobuf, InvalidGraph, NoSuchFile, NotImplemented and RuntimeException (plain
    Exceptions), zip and JSON errors, a missing archive member (KeyError). Only these make a
    model file unusable input (exit 2); anything else is a bug (exit 3, with its traceback)."""
    errors: list[type[BaseException]] = [RuntimeError, ValueError, OSError, KeyError,
                                         EOFError, zipfile.BadZipFile]
    try:
        from google.protobuf.message import Error as ProtobufError

        errors.append(ProtobufError)
    except ImportError:
        pass
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        errors.extend(getattr(ort_state, name) for name in (
            "Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph", "NoSuchFile",
            "NotImplemented", "RuntimeException") if hasattr(ort_state, name))
    except ImportError:
        pass
    return tuple(errors)

#: What to do instead of pickling a model (appended to every refusal).
EXPORT_HINT = ("export it instead with torch.jit.script(model) (or torch.jit.trace) + "
               "torch.jit.save, torch.export.export + torch.export.save (.pt2), or "
               "torch.onnx.export")

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".joblib", ".sav", ".bin", ".ckpt"}


def refuse_pickle(path: Path, what: str) -> InputError:
    """The one-line refusal of a pickled model."""
    return InputError(f"model {path}: {what}; validator never unpickles a model (unpickling "
                      f"can run arbitrary code): {EXPORT_HINT}")


# ---------------------------------------------------------------------------------------------
# sniffing


def sniff(path: Path) -> str:
    """The format of a model file: ``"torchscript"``, ``"torch.export"`` or ``"onnx"``.

    Reads only the first bytes and, for zip archives, the member names (never a pickle).
    Raises :class:`InputError` for pickles (with the export hint) and unknown files.
    """
    if not path.is_file():
        raise InputError(f"model {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                fmt = _zip_kind(names)
                if fmt == "torch.export":
                    fmt_file = next(n for n in names if _strip_root(n) == "archive_format")
                    if z.read(fmt_file).decode(errors="replace").strip() != "pt2":
                        fmt = "unknown"
        except zipfile.BadZipFile as exc:
            raise InputError(f"model {path}: damaged zip archive ({exc})") from exc
        if fmt == "pickle":
            raise refuse_pickle(path, "is a torch.save pickle (a zip with data.pkl and no "
                                      "TorchScript code/)")
        if fmt == "unknown":
            raise InputError(f"model {path}: a zip archive that is neither TorchScript nor a "
                             "torch.export .pt2 archive")
        return fmt
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise refuse_pickle(path, f"is a Python pickle (protocol {head[1]})")
    if path.suffix.lower() in _PICKLE_SUFFIXES and not _is_onnx(path):
        raise refuse_pickle(path, f"a '{path.suffix}' file that is neither a TorchScript or "
                                  "torch.export archive nor ONNX is taken for a pickle")
    return "onnx"


def _is_onnx(path: Path) -> bool:
    """True when the file parses as an ONNX graph (protobuf: parsing runs no code)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except read_errors():
        return False
    return bool(proto.graph.node) and bool(proto.graph.output)


def _strip_root(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def _zip_kind(names: list[str]) -> str:
    rel = {_strip_root(n) for n in names}
    if "archive_format" in rel and any(r.startswith("models/") for r in rel):
        return "torch.export"
    if "constants.pkl" in rel and any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel or any(r.endswith(".pkl") for r in rel):
        return "pickle"
    return "unknown"


# ---------------------------------------------------------------------------------------------
# metadata


def parse_metadata(text: str | bytes | None, path: Path, where: str) -> dict[str, Any]:
    """The ``validator.json`` document (an empty dict when absent)."""
    if text is None:
        return {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"model {path}: {where} is not valid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"model {path}: {where} must be a JSON object")
    return meta


# ---------------------------------------------------------------------------------------------
# backends


@dataclass
class Backend:
    """A loaded network: runs model-space inputs ``(B, width)`` to outputs ``(B, C)``.

    TorchScript/torch.export: ``torch_module`` evaluates and is differentiated. ONNX:
    ``session`` (onnxruntime) evaluates; ``grad_module``, the ``onnx2torch`` conversion checked
    against onnxruntime, is differentiated (None: finite differences).
    """

    format: str
    width: int | None
    input_names: tuple[str, ...] | None
    meta: dict[str, Any]
    dtype: Any  # numpy dtype of the model's inputs
    static_batch: int | None = None
    torch_module: Any = None  # the TorchScript/export module (evaluation and autograd)
    grad_module: Any = None  # ONNX: the onnx2torch conversion used for autograd
    session: Any = None
    onnx_inputs: tuple[tuple[str, int], ...] = ()  # (name, rank) per ONNX input
    onnx_output: str = ""
    onnx_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    # -- numpy evaluation -------------------------------------------------------------------

    def run(self, z: np.ndarray) -> np.ndarray:
        """Outputs ``(B, C)`` (float64) for model-space inputs ``z`` ``(B, width)``."""
        if len(z) == 0:
            return np.zeros((0, 0))
        if self.static_batch is not None and len(z) != self.static_batch:
            return _padded(self.run, z, self.static_batch)
        z = np.ascontiguousarray(z, dtype=self.dtype)
        if self.session is not None:
            if len(self.onnx_inputs) == 1 and self.onnx_inputs[0][1] == 2:
                feeds = {self.onnx_inputs[0][0]: z}
            else:
                feeds = {name: (z[:, k] if rank == 1 else z[:, k:k + 1])
                         for k, (name, rank) in enumerate(self.onnx_inputs)}
            out = self.session.run([self.onnx_output], feeds)[0]
        else:
            import torch

            with torch.no_grad():
                out = as_2d(self.torch_module(torch.from_numpy(z))).numpy()
        return _as_2d_np(out).astype(np.float64)

    def torch_forward(self, module: Any = None):
        """A torch callable ``(B, width) -> (B, C)`` for autograd (of ``module``, by default
        the backend's torch module), or None."""
        if module is None:
            module = self.grad_module if self.grad_module is not None else self.torch_module
        if module is None:
            return None
        if self.onnx_inputs and not (len(self.onnx_inputs) == 1
                                     and self.onnx_inputs[0][1] == 2):
            ranks = [rank for _, rank in self.onnx_inputs]

            def fn(z):
                cols = [z[:, k] if r == 1 else z[:, k:k + 1] for k, r in enumerate(ranks)]
                return as_2d(module(*cols))
        else:
            def fn(z):
                return as_2d(module(z))
        if self.static_batch is None:
            return fn
        batch = self.static_batch

        def padded(z):
            import torch

            n = z.shape[0]
            outs = []
            for s in range(0, n, batch):
                part = z[s:s + batch]
                if part.shape[0] < batch:
                    pad = torch.zeros((batch - part.shape[0], z.shape[1]), dtype=z.dtype)
                    part = torch.cat([part, pad])
                outs.append(fn(part))
            return torch.cat(outs)[:n]
        return padded


def _padded(run, z: np.ndarray, batch: int) -> np.ndarray:
    outs = []
    for s in range(0, len(z), batch):
        part = z[s:s + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part), z.shape[1]), z.dtype)])
        outs.append(run(part))
    return np.concatenate(outs)[:len(z)]


def as_2d(out):
    """A torch model output as a ``(B, C)`` tensor (a tuple/list/dict of one tensor is
    unwrapped; ``(B,)`` becomes ``(B, 1)``)."""
    if isinstance(out, dict):
        out = next(iter(out.values())) if len(out) == 1 else out
    if isinstance(out, (tuple, list)):
        out = out[0] if len(out) == 1 else out
    if not hasattr(out, "dim"):
        raise ValueError(f"the model returned {type(out).__name__}, not one tensor")
    if out.dim() == 1:
        return out.unsqueeze(1)
    if out.dim() != 2:
        raise ValueError(f"the model output has shape {tuple(out.shape)}; expected (batch,) "
                         "or (batch, nodes)")
    return out


def _as_2d_np(out: np.ndarray) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim == 1:
        return out[:, None]
    if out.ndim != 2:
        raise ValueError(f"the model output has shape {out.shape}; expected (batch,) or "
                         "(batch, nodes)")
    return out


# ---------------------------------------------------------------------------------------------
# TorchScript


def load_torchscript(path: Path) -> Backend:
    """A TorchScript archive via ``torch.jit.load`` (no Python unpickling, see module doc)."""
    import torch

    extra = {METADATA_KEY: ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except read_errors() as exc:
        raise InputError(f"model {path}: cannot load the TorchScript archive "
                         f"({first_line(exc)})") from exc
    module.eval()
    meta = parse_metadata(extra.get(METADATA_KEY), path, f"TorchScript extra file "
                                                         f"{METADATA_KEY}")
    dtype = np.float32
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            dtype = np.float64 if t.dtype == torch.float64 else np.float32
            break
    for p in module.parameters():
        p.requires_grad_(False)
    return Backend(format="torchscript", width=None, input_names=None,
                   meta=meta, dtype=dtype, torch_module=module)


# ---------------------------------------------------------------------------------------------
# torch.export (.pt2), read without torch.export.load

_SYM_NAMES = {  # sympy constructors and assumptions in srepr-style shape expressions
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "true", "false", "True",
    "False", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "floor", "ceiling", "sqrt",
    "Piecewise", "ITE", "positive", "negative", "nonnegative", "nonpositive", "integer",
    "real", "finite", "infinite", "zero", "nonzero", "even", "odd", "precision",
    # torch.utils._sympy.functions, as the deserializer maps them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
}
_SYM_QUOTED = re.compile(r"'([^']*)'")
_SYM_CHARS = re.compile(r"[A-Za-z0-9_\s+\-*/%().,<>=!&|~]*")
_SYM_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_SYM_SYMBOL = re.compile(r"[a-z]+[0-9]+")


def _check_sym_expr(expr: str) -> bool:
    """True for a plain symbolic-shape expression such as ``s77``, ``2*s77 + 1`` or
    ``Mul(Integer(2), Symbol('s77', positive=True, integer=True))``: only sympy constructors,
    assumptions, numbers and symbol names (quoted or bare), no attribute access."""
    if len(expr) > 4000:
        return False
    quoted = _SYM_QUOTED.findall(expr)
    if not all(_SYM_SYMBOL.fullmatch(q) for q in quoted):
        return False
    rest = _SYM_QUOTED.sub("0", expr)
    if not _SYM_CHARS.fullmatch(rest):
        return False
    if re.search(r"(?<![0-9])\.|\.(?![0-9])", rest):  # a dot only inside a number
        return False
    return all(tok in _SYM_NAMES or _SYM_SYMBOL.fullmatch(tok)
               for tok in _SYM_IDENT.findall(rest))


def _walk_expr_strings(obj: Any):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "expr_str" and isinstance(v, str):
                yield v
            else:
                yield from _walk_expr_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_expr_strings(v)


def _allowed_target(target: Any) -> bool:
    import math
    import operator

    import torch

    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return True
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", "")
    if module in ("_operator", "operator") and getattr(operator, name, None) is target:
        return True
    if getattr(math, name, None) is target:
        return True
    return name.startswith(("sym_", "_sym_")) and getattr(torch, name, None) is target


def load_pt2(path: Path) -> Backend:
    """A ``torch.export`` archive, read without pickle and without executing stored code."""

    def bad(why: str) -> InputError:
        return InputError(f"model {path}: torch.export archive {why}")

    try:
        return _load_pt2(path, bad)
    except InputError:
        raise
    except read_errors() as exc:
        raise bad(f"cannot be read ({first_line(exc)})") from exc


def _load_pt2(path: Path, bad) -> Backend:
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive import constants as pc
    from torch.export.pt2_archive._package import PT2ArchiveReader, _build_file_map

    with PT2ArchiveReader(str(path)) as reader:
        names = reader.get_file_names()
        for prefix in (pc.AOTINDUCTOR_DIR, pc.EXECUTORCH_DIR, pc.MTIA_DIR):
            if any(n.startswith(prefix) for n in names):
                raise bad(f"contains compiled code ({prefix}); export it without AOTInductor "
                          "packaging (torch.export.save of the ExportedProgram)")
        if reader.read_string(pc.ARCHIVE_VERSION_PATH) != pc.ARCHIVE_VERSION_VALUE:
            raise bad("has an archive version this torch does not read")
        models = [n for n in names if n.startswith(pc.MODELS_DIR) and n.endswith(".json")]
        if len(models) != 1:
            raise bad(f"holds {len(models)} programs; one is expected")
        model_name = models[0][len(pc.MODELS_DIR):-len(".json")]
        for legacy in (f"{pc.WEIGHTS_DIR}{model_name}.pt", f"{pc.CONSTANTS_DIR}{model_name}.pt"):
            if legacy in names:
                raise refuse_pickle(path, f"is a legacy torch.export archive whose {legacy} "
                                          "is a pickle")
        try:
            raw_ep = json.loads(reader.read_bytes(models[0]))
            wconf = _dict_to_dataclass(schema.PayloadConfig, json.loads(reader.read_string(
                pc.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model_name))))
            cconf = _dict_to_dataclass(schema.PayloadConfig, json.loads(reader.read_string(
                pc.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model_name))))
        except read_errors() as exc:
            raise bad(f"is damaged ({first_line(exc)})") from exc
        for fqn, meta in [*wconf.config.items(), *cconf.config.items()]:
            if meta.use_pickle or meta.tensor_meta is None:
                raise refuse_pickle(path, f"is a torch.export archive whose '{fqn}' is "
                                          "pickled (a tensor subclass or a Python object)")
        for fqn, meta in cconf.config.items():
            if not meta.path_name.startswith(pc.TENSOR_CONSTANT_FILENAME_PREFIX):
                raise refuse_pickle(path, f"is a torch.export archive with a Python object "
                                          f"constant '{fqn}'")
        for expr in _walk_expr_strings(raw_ep):
            if not _check_sym_expr(expr):
                raise bad(f"has a symbolic expression that is not a plain shape formula: "
                          f"{expr[:60]!r}")
        raw_ep["guards_code"] = []  # code strings that ep.module() would exec
        extra_name = pc.EXTRA_DIR + METADATA_KEY
        meta_text = reader.read_string(extra_name) if extra_name in names else None
        try:
            state_dict = _tensors(reader, wconf, pc.WEIGHTS_DIR, _build_file_map, torch)
            constants = _tensors(reader, cconf, pc.CONSTANTS_DIR, _build_file_map, torch)
            serialized = _dict_to_dataclass(schema.ExportedProgram, raw_ep)
        except read_errors() as exc:
            raise bad(f"is damaged ({first_line(exc)})") from exc
    try:
        ep = ExportedProgramDeserializer(None).deserialize(serialized, state_dict, constants,
                                                           None)
    except read_errors() as exc:
        raise bad(f"cannot be deserialised ({first_line(exc)})") from exc
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        for node in (graph.nodes if graph is not None else ()):
            if node.op in ("call_method", "call_module"):
                raise bad(f"has a '{node.op}' node ({node.target}); only operator calls are "
                          "allowed")
            if node.op == "call_function" and not _allowed_target(node.target):
                raise bad(f"calls '{node.target}', which is not a torch operator")
    user_inputs = [s for s in ep.graph_signature.input_specs
                   if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(user_inputs) != 1:
        raise bad(f"takes {len(user_inputs)} tensors; one (batch, inputs) tensor is expected")
    placeholder = next(n for n in ep.graph.nodes
                       if n.op == "placeholder" and n.name == user_inputs[0].arg.name)
    val = placeholder.meta.get("val")
    width = static_batch = None
    dtype = np.float32
    if val is not None:
        if val.dim() != 2:
            raise bad(f"takes a tensor of rank {val.dim()}; a (batch, inputs) tensor is "
                      "expected")
        width = int(val.shape[1]) if isinstance(val.shape[1], int) else None
        static_batch = int(val.shape[0]) if isinstance(val.shape[0], int) else None
        dtype = np.float64 if val.dtype == torch.float64 else np.float32
    module = ep.module()
    for p in module.parameters():
        p.requires_grad_(False)
    return Backend(format="torch.export", width=width, input_names=None,
                   meta=parse_metadata(meta_text, path, f"extra file {METADATA_KEY}"),
                   dtype=dtype, static_batch=static_batch, torch_module=module)


def _tensors(reader, config, base_dir: str, build_file_map, torch) -> dict[str, Any]:
    """Raw (never pickled) tensors of a payload config, as ``torch.export.load`` builds them."""
    from torch._export.serde.serialize import (
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    file_map = build_file_map(reader, config, base_dir)
    out: dict[str, Any] = {}
    for fqn, meta in config.config.items():
        tm = meta.tensor_meta
        t = torch.as_strided(file_map[meta.path_name], size=deserialize_size(tm.sizes),
                             stride=deserialize_stride(tm.strides),
                             storage_offset=deserialize_storage_offset(tm.storage_offset))
        out[fqn] = torch.nn.Parameter(t, requires_grad=False) if meta.is_param else t
    return out


# ---------------------------------------------------------------------------------------------
# ONNX


def load_onnx(path: Path) -> Backend:
    """An ONNX model: inspected with ``onnx``, run with onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError(f"model {path}: reading ONNX needs the packages onnx and onnxruntime "
                         "(pip install 'hep-validator[model]')") from exc
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except read_errors() as exc:
        raise InputError(f"model {path}: not a TorchScript, torch.export or ONNX model "
                         f"({first_line(exc)})") from exc
    graph = proto.graph
    if not graph.output or not graph.node:
        raise InputError(f"model {path}: not a TorchScript, torch.export or ONNX model (no "
                         "ONNX graph)")
    props = {p.key: p.value for p in proto.metadata_props}
    meta = parse_metadata(props.get(METADATA_KEY), path, f"ONNX metadata {METADATA_KEY}")
    for key, dest in (("input_names", "inputs"), ("output_names", "outputs")):
        if key in props and dest not in meta:
            try:
                meta[dest] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise InputError(f"model {path}: ONNX metadata '{key}' is not a JSON list") \
                    from exc
    try:
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except read_errors() as exc:
        raise InputError(f"model {path}: onnxruntime cannot load it ({first_line(exc)})") \
            from exc
    inputs = session.get_inputs()
    types = {i.type for i in inputs}
    if not types <= {"tensor(float)", "tensor(double)"} or len(types) != 1:
        raise InputError(f"model {path}: ONNX inputs must all be float or all double tensors "
                         f"(got {', '.join(sorted(types))})")
    dtype = np.float64 if types == {"tensor(double)"} else np.float32
    ranks, static = [], set()
    for i in inputs:
        shape = list(i.shape)
        if len(shape) not in (1, 2):
            raise InputError(f"model {path}: ONNX input '{i.name}' has rank {len(shape)}; "
                             "(batch,) or (batch, inputs) is expected")
        if isinstance(shape[0], int):
            static.add(shape[0])
        ranks.append(len(shape))
    width: int | None
    input_names: tuple[str, ...] | None
    if len(inputs) == 1 and ranks[0] == 2:
        w = inputs[0].shape[1]
        width = w if isinstance(w, int) else None
        input_names = None
    else:
        for i, r in zip(inputs, ranks, strict=True):
            if r == 2 and i.shape[1] != 1:
                raise InputError(f"model {path}: ONNX input '{i.name}' has shape {i.shape}; "
                                 "named inputs must each be one column")
        width = len(inputs)
        input_names = tuple(i.name for i in inputs)
    out = session.get_outputs()[0]
    notes = []
    if len(session.get_outputs()) > 1:
        notes.append(f"the ONNX model has {len(session.get_outputs())} outputs; the first "
                     f"('{out.name}') is audited")
    return Backend(format="onnx", width=width, input_names=input_names,
                   meta=meta, dtype=dtype, static_batch=static.pop() if len(static) == 1
                   else None, session=session,
                   onnx_inputs=tuple((i.name, r) for i, r in zip(inputs, ranks, strict=True)),
                   onnx_output=out.name, onnx_path=path, notes=notes)


def import_onnx2torch():
    """``onnx2torch``, importable even where torchvision is missing or broken.

    onnx2torch imports torchvision at import time, but only its NMS and RoIAlign converters
    use it. Where ``import torchvision`` fails (e.g. a CUDA build of torchvision beside the CPU
    build of torch), a stand-in module is used for the import only: converting a model with
    those two operators then fails, and the finite-difference fallback is used.
    """
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("onnx2torch")
    except ImportError as exc:
        if "onnx2torch" in str(exc) and "torchvision" not in str(exc):
            raise
    except (RuntimeError, OSError, AttributeError):  # torchvision's C++ ops do not load
        pass
    for name in [n for n in sys.modules if n.split(".")[0] == "onnx2torch"]:
        del sys.modules[name]  # a half-imported onnx2torch
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] ==
             "torchvision"}
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not usable in this environment")

    ops.nms = ops.roi_align = ops.box_convert = unavailable
    stub.ops = ops
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        return importlib.import_module("onnx2torch")
    finally:
        for name in ("torchvision", "torchvision.ops"):
            if sys.modules.get(name) in (stub, ops):
                del sys.modules[name]
        sys.modules.update(saved)  # whatever was there before (the stand-in is not kept)


def onnx_to_torch(backend: Backend, probe: np.ndarray) -> tuple[Any, str]:
    """An ``onnx2torch`` conversion of an ONNX backend's model, kept only when it reproduces
    onnxruntime on ``probe`` (model-space inputs). Returns ``(module or None, note)``."""
    try:
        import onnx
        import torch

        onnx2torch = import_onnx2torch()
        module = onnx2torch.convert(onnx.load(str(backend.onnx_path)))
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    except Exception as exc:  # any failure of the converter: finite differences instead
        return None, f"onnx2torch conversion failed ({first_line(exc)})"
    try:
        fn = backend.torch_forward(module)
        with torch.no_grad():
            got = fn(torch.from_numpy(np.ascontiguousarray(probe, dtype=backend.dtype)))
        got = got.double().numpy()
        want = backend.run(probe)
    except Exception as exc:  # any failure of the converted module: finite differences
        return None, f"onnx2torch conversion does not run ({first_line(exc)})"
    tol = 1e-4 if backend.dtype == np.float32 else 1e-9
    if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol):
        return None, "onnx2torch conversion disagrees with onnxruntime"
    return module, "onnx2torch"


#: How torch opens the error of a TorchScript operation: the scripted code's traceback follows,
#: and the error itself is the last line.
TORCHSCRIPT_ERROR_HEADER = "The following operation failed in the TorchScript interpreter."


def first_line(exc: BaseException) -> str:
    """The line of ``exc``'s message that says what went wrong: its first, or for a TorchScript
    operation's error (a header, then a traceback) its last."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    if text and text[0].startswith(TORCHSCRIPT_ERROR_HEADER):
        text = text[-1:]
    return (text[0] if text else type(exc).__name__)[:200]
