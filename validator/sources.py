"""Read samples: parquet, CSV and ROOT TTrees, in column chunks of bounded size.

A :class:`Sample` names its files and its weight column; :func:`iter_chunks` yields dictionaries
of numpy arrays, at most ``chunk_rows`` rows each, so a file larger than memory streams.
Every problem with a file (missing, unreadable, a tree or column not there, a jagged weight)
is raised as :class:`~validator.errors.InputError` with one line that names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validator.errors import InputError

#: Kinds a column can have. Only ``float``, ``int`` and ``bool`` can be features.
COLUMN_KINDS = ("float", "int", "bool", "string", "jagged", "other")

#: ``Jet_pt[0]``: the leading element of a jagged branch, a per-event reduction by name.
_ELEMENT = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\[(?P<index>\d+)\]$")

DEFAULT_CHUNK_ROWS = 250_000
#: Row number of an event within its file, usable in selections (e.g. to split a file in two).
ENTRY = "_entry"
#: Index of the file (within its sample) an event was read from.
FILE = "_file"
VIRTUAL_COLUMNS = (ENTRY, FILE)


@dataclass(frozen=True)
class Source:
    """One input file, with the tree to read for ROOT files."""

    path: Path
    format: str  # parquet | csv | root
    tree: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}:{self.tree}" if self.tree else str(self.path)


@dataclass(frozen=True)
class Sample:
    """A named sample (``sim`` or ``data``): its files, its weight column and its columns.

    ``columns`` maps each column present in every file to its kind (see ``COLUMN_KINDS``);
    ``n_rows`` is the total number of rows.
    """

    name: str
    sources: tuple[Source, ...]
    weight: str | None
    columns: dict[str, str]
    n_rows: int
    partial_columns: tuple[str, ...] = field(default=())

    def has(self, expression: str) -> bool:
        """Whether a column or a jagged-element expression (``Jet_pt[0]``) can be read."""
        match = _ELEMENT.match(expression)
        if match:
            return self.columns.get(match["name"]) == "jagged"
        return expression in self.columns


@dataclass(frozen=True)
class Selection:
    """An event selection: a SQL boolean expression over columns (polars ``sql_expr``).

    ``_entry`` is the row number within the file. Events where the expression is false or
    NULL are dropped before anything is filled.
    """

    text: str
    columns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, option: str) -> Selection:
        import polars as pl

        try:
            expr = pl.sql_expr(text)
            names = tuple(expr.meta.root_names())
        except Exception as exc:
            raise InputError(f"{option}: cannot parse '{text}' ({_short(exc)})") from exc
        return cls(text=text, columns=names)

    def mask(self, chunk: dict[str, np.ndarray], label: str) -> np.ndarray:
        import polars as pl

        frame = pl.DataFrame({c: chunk[c] for c in self.columns})
        try:
            result = frame.select(pl.sql_expr(self.text)).to_series()
        except Exception as exc:
            raise InputError(f"{label}: selection '{self.text}' failed ({_short(exc)})") from exc
        if result.dtype != pl.Boolean:
            raise InputError(f"{label}: selection '{self.text}' is not a true/false condition")
        return result.fill_null(False).to_numpy()


NUMERIC_KINDS = ("bool", "int", "float")


def common_kind(a: str | None, b: str | None) -> str | None:
    """The kind two files' versions of a column can be read as together, or None.

    Numeric kinds mix (every number is read as float64): int with float is float, bool with
    int is int.
    """
    if a is None or b is None:
        return None
    if a == b:
        return a
    if a in NUMERIC_KINDS and b in NUMERIC_KINDS:
        return max(a, b, key=NUMERIC_KINDS.index)
    return None


def parse_source(spec: str) -> Source:
    """Parse ``path``, ``path.root:tree`` or ``path.csv`` into a :class:`Source`."""
    tree = None
    path_text = spec
    lowered = spec.lower()
    if ".root:" in lowered:
        cut = lowered.rindex(".root:") + len(".root")
        path_text, tree = spec[:cut], spec[cut + 1 :] or None
    path = Path(path_text)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        fmt = "parquet"
    elif suffix in (".csv", ".tsv"):
        fmt = "csv"
    elif suffix == ".root":
        fmt = "root"
    else:
        raise InputError(f"{spec}: unknown file type (expected .parquet, .csv or .root[:tree])")
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    return Source(path=path, format=fmt, tree=tree)


# ---------------------------------------------------------------------------------- schemas


def _arrow_kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    ):
        return "jagged"
    return "other"


def _root_kind(typename: str) -> str:
    name = typename.strip()
    if name in ("char*", "std::string", "string", "TString"):
        return "string"
    if name.endswith("]") or name.startswith(("std::vector", "vector", "ROOT::VecOps")):
        return "jagged"
    if name in ("bool", "Bool_t"):
        return "bool"
    if name in ("float", "double", "Float_t", "Double_t", "Float16_t", "Double32_t"):
        return "float"
    ints = ("int", "uint", "short", "long", "char", "unsigned", "Int", "UInt", "Long", "ULong",
            "Short", "UShort", "Char_t", "UChar_t", "size_t")
    if name.startswith(ints):
        return "int"
    return "other"


def _root_tree(source: Source) -> Any:
    try:
        import uproot
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError(
            f"{source.path}: reading ROOT files needs uproot (pip install 'validator[root]')"
        ) from exc
    try:
        handle = uproot.open(source.path)
    except Exception as exc:
        raise InputError(f"{source.path}: not a readable ROOT file ({_short(exc)})") from exc
    trees = [k.split(";")[0] for k, c in handle.classnames().items() if c.startswith("TTree")]
    trees = list(dict.fromkeys(trees))
    if source.tree is None:
        if len(trees) == 1:
            return handle[trees[0]]
        if not trees:
            raise InputError(f"{source.path}: no TTree in the file")
        raise InputError(
            f"{source.path}: holds several trees ({', '.join(trees)}); name one as "
            f"{source.path}:TREE"
        )
    try:
        tree = handle[source.tree]
    except Exception as exc:
        raise InputError(
            f"{source.path}: no tree '{source.tree}' (trees: {', '.join(trees) or 'none'})"
        ) from exc
    if not hasattr(tree, "typenames"):
        raise InputError(f"{source.path}: '{source.tree}' is not a TTree")
    return tree


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def read_schema(source: Source) -> tuple[dict[str, str], int]:
    """Column kinds and row count of one file."""
    if source.format == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(source.path)
        except Exception as exc:
            raise InputError(f"{source.path}: not a readable parquet file ({_short(exc)})") from exc
        schema = meta.schema_arrow
        kinds = {name: _arrow_kind(schema.field(name).type) for name in schema.names}
        return kinds, meta.metadata.num_rows
    if source.format == "csv":
        try:
            reader, kinds = _open_csv(source)
            n_rows = 0
            for batch in reader:
                n_rows += batch.num_rows
        except Exception as exc:
            raise InputError(f"{source.path}: not a readable CSV file ({_short(exc)})") from exc
        return kinds, n_rows
    tree = _root_tree(source)
    kinds = {name: _root_kind(typename) for name, typename in tree.typenames().items()}
    return kinds, int(tree.num_entries)


def open_sample(name: str, specs: Sequence[str], weight: str | None = None) -> Sample:
    """Open the files of one sample and check they can be used together.

    The columns of the sample are those present in every file; a weight column, where named,
    must be numeric and flat in every file.
    """
    if not specs:
        raise InputError(f"--{name}: no input file given")
    sources = tuple(parse_source(spec) for spec in specs)
    columns: dict[str, str] | None = None
    seen: set[str] = set()
    n_rows = 0
    for source in sources:
        kinds, rows = read_schema(source)
        if weight is not None:
            if weight not in kinds:
                raise InputError(f"{source.label}: weight column '{weight}' not found")
            if kinds[weight] == "jagged":
                raise InputError(
                    f"{source.label}: weight column '{weight}' is jagged (one value per object); "
                    "a per-event weight is needed"
                )
            if kinds[weight] not in ("float", "int"):
                raise InputError(
                    f"{source.label}: weight column '{weight}' is not numeric ({kinds[weight]})"
                )
        n_rows += rows
        seen.update(kinds)
        if columns is None:
            columns = dict(kinds)
        else:
            merged = {c: common_kind(k, kinds.get(c)) for c, k in columns.items()}
            columns = {c: k for c, k in merged.items() if k is not None}
    assert columns is not None
    if n_rows == 0:
        raise InputError(f"{', '.join(s.label for s in sources)}: the {name} sample has no events")
    partial = tuple(sorted(seen - set(columns)))
    return Sample(name=name, sources=sources, weight=weight, columns=columns, n_rows=n_rows,
                  partial_columns=partial)


# ---------------------------------------------------------------------------------- reading


def _element_of_lists(offsets: np.ndarray, values: np.ndarray, index: int) -> np.ndarray:
    """Element ``index`` of each list given by ``offsets``; NaN where the list is too short."""
    starts = offsets[:-1]
    position = starts + index
    present = position < offsets[1:]
    out = np.full(len(starts), np.nan)
    out[present] = values[position[present]]
    return out


def _arrow_to_numpy(column: Any, element: int | None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if element is not None:
        if pa.types.is_fixed_size_list(column.type):
            column = column.cast(pa.list_(column.type.value_type))
        column = column.fill_null([]) if column.null_count else column
        offsets = np.asarray(column.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = column.values.cast(pa.float64()).to_numpy(zero_copy_only=False)
        offsets = offsets - offsets[0]
        return _element_of_lists(offsets, values, element)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    else:
        column = pc.cast(column, pa.float64(), safe=False)
    return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _split_expressions(columns: Sequence[str]) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """Columns to read from the file, and the element expressions built from them."""
    needed: list[str] = []
    elements: dict[str, tuple[str, int]] = {}
    for expr in columns:
        match = _ELEMENT.match(expr)
        if match:
            elements[expr] = (match["name"], int(match["index"]))
            base = match["name"]
        else:
            base = expr
        if base not in needed:
            needed.append(base)
    return needed, elements


def _open_csv(source: Source, columns: Sequence[str] | None = None,
              chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Any:
    """A streaming CSV reader (tab-separated for .tsv) that reads every number as float64.

    pyarrow guesses types from the first block; an integer-looking column with a decimal
    further down would then fail to convert, so numeric columns are read as float64.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if source.path.suffix.lower() == ".tsv" else ",")
    inferred = pcsv.open_csv(source.path, parse_options=parse).schema
    types = {f.name: pa.float64() for f in inferred if _arrow_kind(f.type) in ("int", "float")}
    return pcsv.open_csv(
        source.path,
        parse_options=parse,
        read_options=pcsv.ReadOptions(block_size=max(1 << 20, 64 * chunk_rows)),
        convert_options=pcsv.ConvertOptions(include_columns=columns or [], column_types=types),
    ), {f.name: _arrow_kind(f.type) for f in inferred}


def _iter_arrow(source: Source, columns: Sequence[str], chunk_rows: int) -> Iterator[Any]:
    """Yield pyarrow tables (RecordBatches) of at most ``chunk_rows`` rows."""
    needed, _ = _split_expressions(columns)
    try:
        if source.format == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(source.path).iter_batches(
                batch_size=chunk_rows, columns=needed
            )
        else:
            reader, _ = _open_csv(source, needed, chunk_rows)
            yield from reader
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{source.label}: read failed ({_short(exc)})") from exc


def _chunk_from_arrow(batch: Any, columns: Sequence[str]) -> dict[str, np.ndarray]:
    _, elements = _split_expressions(columns)
    out: dict[str, np.ndarray] = {}
    for expr in columns:
        if expr in elements:
            base, index = elements[expr]
            out[expr] = _arrow_to_numpy(batch.column(base), index)
        else:
            out[expr] = _arrow_to_numpy(batch.column(expr), None)
    return out


def _iter_root(source: Source, columns: Sequence[str], chunk_rows: int,
               ) -> Iterator[dict[str, np.ndarray]]:
    import awkward as ak

    tree = _root_tree(source)
    needed, elements = _split_expressions(columns)
    branches = set(tree.keys())
    missing = [c for c in needed if c not in branches]
    if missing:
        raise InputError(f"{source.label}: branch '{missing[0]}' not found")
    try:
        for arrays in tree.iterate(needed, step_size=chunk_rows, library="ak"):
            out: dict[str, np.ndarray] = {}
            for expr in columns:
                if expr in elements:
                    base, index = elements[expr]
                    padded = ak.pad_none(arrays[base], index + 1, clip=True)[:, index]
                    out[expr] = ak.to_numpy(ak.fill_none(padded, np.nan)).astype(np.float64)
                    continue
                array = arrays[expr]
                if array.ndim > 1:
                    raise InputError(f"{source.label}: branch '{expr}' is jagged; "
                                     f"name an element such as {expr}[0]")
                layout_type = str(ak.type(array))
                if "string" in layout_type:
                    out[expr] = np.asarray(ak.to_list(array), dtype=object)
                else:
                    out[expr] = ak.to_numpy(array).astype(np.float64)
            yield out
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{source.label}: read failed ({_short(exc)})") from exc


def iter_chunks(sample: Sample, columns: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                selection: Selection | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield the requested columns of every file of ``sample`` in chunks of bounded size.

    Numeric and boolean columns come as float64 arrays, string columns as object arrays;
    ``Name[k]`` gives element ``k`` of a jagged column per event (NaN when the event has
    fewer than ``k+1`` elements). The weight column, if the sample has one, is read too.
    With a ``selection``, only the selected events are yielded.
    """
    wanted = list(dict.fromkeys([*columns, *([sample.weight] if sample.weight else [])]))
    extra = selection.columns if selection else ()
    to_read = [c for c in dict.fromkeys([*wanted, *extra]) if c not in VIRTUAL_COLUMNS]
    for expr in to_read:
        if not sample.has(expr):
            match = _ELEMENT.match(expr)
            base = match["name"] if match else expr
            if match and base in sample.columns:
                raise InputError(
                    f"{sample.sources[0].label}: column '{base}' is not jagged; use '{base}'"
                )
            raise InputError(f"{sample.sources[0].label}: column '{base}' not found")
    for file_index, source in enumerate(sample.sources):
        if source.format == "root":
            chunks = _iter_root(source, to_read, chunk_rows)
        else:
            chunks = (_chunk_from_arrow(b, to_read)
                      for b in _iter_arrow(source, to_read, chunk_rows) if b.num_rows)
        entry = 0
        for chunk in chunks:
            n = len(next(iter(chunk.values())))
            chunk[ENTRY] = np.arange(entry, entry + n, dtype=np.float64)
            chunk[FILE] = np.full(n, float(file_index))
            if selection is not None:
                keep = selection.mask(chunk, source.label)
                chunk = {c: chunk[c][keep] for c in wanted}
            else:
                chunk = {c: chunk[c] for c in wanted}
            entry += n
            yield chunk
