"""Read samples: parquet, CSV and ROOT (TTrees and RNTuples), in column chunks of bounded size.

A :class:`Sample` names its files and its weight column; :func:`iter_chunks` yields dictionaries
of numpy arrays of exactly ``chunk_rows`` rows each (the last chunk of a file may be shorter),
so a file larger than memory streams.
Every problem with a file (missing, unreadable, a tree or column not there, a jagged weight)
is raised as :class:`~validator.errors.InputError` with one line that names it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from validator.errors import InputError

#: Rows read at a time: bounds the memory; the results do not depend on it. A chunk's arrays
#: (read, converted, selected, binned, and the network's inputs and derivatives) set a worker's
#: peak memory: measured on the audited 1M x 30-feature run, all processes' peak PSS was
#: 2.2 GiB with 250k-row chunks and 1.98 GiB with 125k, in the same time.
DEFAULT_CHUNK_ROWS = 125_000
#: A partition (one worker task) holds at least this many chunks: what a task costs besides
#: its rows (sending it, returning its accumulators of tens of MB) is paid per partition, so
#: smaller chunks do not mean more tasks.
PARTITION_CHUNKS = 2


def read_errors() -> tuple[type[BaseException], ...]:
    """What a missing, truncated, malformed or unreadable file raises in the readers (pyarrow,
    polars, uproot): these are the file's fault (exit 2). Anything else raised while reading
    is a bug of ours (exit 3, with its traceback), never reported as bad input."""
    import pyarrow as pa

    errors: list[type[BaseException]] = [OSError, EOFError, UnicodeDecodeError,
                                         pa.ArrowException]
    try:
        import polars as pl

        errors.append(pl.exceptions.PolarsError)
    except ImportError:  # pragma: no cover - polars is a dependency
        pass
    try:
        import uproot

        errors.append(uproot.deserialization.DeserializationError)
        errors += [KeyError, ValueError]  # uproot's words for a malformed file or tree
    except ImportError:
        pass
    return tuple(errors)


def expression_errors() -> tuple[type[BaseException], ...]:
    """What a user's SQL expression (a selection, a definition) that polars cannot parse or
    evaluate raises: the expression's fault (exit 2)."""
    import polars as pl

    return (pl.exceptions.PolarsError, ValueError, TypeError)

#: Kinds a column can have. Only ``float``, ``int`` and ``bool`` can be features.
COLUMN_KINDS = ("float", "int", "bool", "string", "jagged", "other")

#: ``Jet_pt[0]``: the leading element of a jagged branch, a per-event reduction by name;
#: ``Jet_pt[-1]`` counts from the end of each event's list, as in Python.
_ELEMENT = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\[(?P<index>-?\d+)\]$")

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

    ``columns`` maps each column present in every file (with kinds that can be read together)
    to its kind (see ``COLUMN_KINDS``); ``n_rows`` is the total number of rows;
    ``partial_columns`` are the columns only some files have (or with kinds that do not mix);
    ``source_columns`` holds each file's own column kinds, in the order of ``sources`` (empty
    when the sample was built by hand).
    """

    name: str
    sources: tuple[Source, ...]
    weight: str | None
    columns: dict[str, str]
    n_rows: int
    partial_columns: tuple[str, ...] = field(default=())
    source_columns: tuple[dict[str, str], ...] = field(default=())

    def has(self, expression: str) -> bool:
        """Whether a column or a jagged-element expression (``Jet_pt[0]``) can be read."""
        match = _ELEMENT.match(expression)
        if match:
            return self.columns.get(match["name"]) == "jagged"
        return expression in self.columns

    def label_lacking(self, column: str) -> str:
        """The label of the first file of the sample that does not have ``column``.

        ``column`` is a column name or an element expression (``Jet_pt[0]``: its column is
        looked up). Where no file lacks it (it is in every file, maybe with kinds that do not
        mix) or the per-file columns are not known, the first file's label is returned; where
        no file has it, that is the first file too.
        """
        match = _ELEMENT.match(column)
        base = match["name"] if match else column
        for source, kinds in zip(self.sources, self.source_columns, strict=False):
            if base not in kinds:
                return source.label
        return self.sources[0].label

    def did_you_mean(self, name: str) -> str:
        """A hint naming the sample's column closest to a misspelt ``name``, or ``""``.

        Gives ``"; did you mean 'n_jets'?"``, ready to append to a message. Names are compared
        ignoring case (``njet`` finds ``nJet``). For an element expression (``Jet_ptt[0]``)
        the jagged columns are searched and the hint keeps the index (``'Jet_pt[0]'``).
        Nothing is suggested for a name that is a column already.
        """
        match = _ELEMENT.match(name)
        if match:
            jagged = [c for c, k in self.columns.items() if k == "jagged"]
            best = _closest(match["name"], jagged)
            if best is None or best == match["name"]:
                return ""
            return f"; did you mean '{best}[{match['index']}]'?"
        if name in self.columns:
            return ""
        best = _closest(name, list(self.columns))
        return f"; did you mean '{best}'?" if best else ""


@dataclass(frozen=True)
class Partition:
    """A part of one file of a sample that can be read on its own: a process or a Dask
    worker fills it into an accumulator (:mod:`validator.engine.pool`).

    ``file`` is the file's index in the sample, ``start`` its first row (events keep their
    row number in the file, so every hash of (file, row) is what a whole read gives);
    ``row_groups`` the parquet row groups it spans (None: the whole file, for ROOT and CSV).
    """

    file: int
    start: int
    n_rows: int
    row_groups: tuple[int, ...] | None = None


def sample_partitions(sample: Sample, chunk_rows: int) -> list[Partition]:
    """The sample's files cut into partitions, in file and row order.

    A parquet file is cut at row-group boundaries into parts of at least
    :data:`PARTITION_CHUNKS` x ``chunk_rows`` rows (a row group is the unit parquet can read
    alone); ROOT and CSV files are one partition each. The cut depends on the files and
    ``chunk_rows`` only, never on how many processes or workers fill them, so the merged
    result is the same for any of them.
    """
    parts: list[Partition] = []
    for index, source in enumerate(sample.sources):
        if source.format != "parquet":
            parts.append(Partition(index, 0, -1))
            continue
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(source.path).metadata
        except read_errors() as exc:
            raise InputError(f"{source.label}: read failed ({_short(exc)})") from exc
        start, groups, rows = 0, [], 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= PARTITION_CHUNKS * chunk_rows or g == meta.num_row_groups - 1:
                parts.append(Partition(index, start, rows, tuple(groups)))
                start, groups, rows = start + rows, [], 0
        if meta.num_row_groups == 0:
            parts.append(Partition(index, 0, 0, ()))
    return parts


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate most like ``name`` ignoring case (difflib), or None when none is close."""
    lowered: dict[str, str] = {}
    for candidate in candidates:
        lowered.setdefault(candidate.lower(), candidate)
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _hint(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean 'X'?"`` for the candidate closest to ``name``, or ``""``."""
    best = _closest(name, candidates)
    return f"; did you mean '{best}'?" if best and best != name else ""


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
        except expression_errors() as exc:
            raise InputError(f"{option}: cannot parse '{text}' ({_short(exc)})") from exc
        return cls(text=text, columns=names)

    def mask(self, chunk: dict[str, np.ndarray], label: str, missing: bool = False
             ) -> np.ndarray:
        """Where the condition holds. Where it reads a NaN or a missing value it is
        ``missing``: False for a selection (the event is dropped), True for the blinding (the
        event is blinded: what cannot be placed outside the signal region stays hidden).
        polars orders NaN above every number, so without this ``met > 20`` would keep the
        events whose met is NaN and ``met < 20`` drop them."""
        import polars as pl

        frame = pl.DataFrame({c: chunk[c] for c in self.columns})
        frame = frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))
        try:
            result = frame.select(pl.sql_expr(self.text)).to_series()
        except expression_errors() as exc:
            raise InputError(f"{label}: selection '{self.text}' failed ({_short(exc)})") from exc
        if result.dtype != pl.Boolean:
            raise InputError(f"{label}: selection '{self.text}' is not a true/false condition")
        return result.fill_null(missing).to_numpy()


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


#: ROOT type names read as text.
_ROOT_STRINGS = frozenset({"char*", "const char*", "std::string", "string", "TString"})
#: ROOT type names read as true/false.
_ROOT_BOOLS = frozenset({"bool", "Bool_t"})
#: ROOT floating-point type names (TTree leaves, RNTuple fields and their aliases).
_ROOT_FLOATS = frozenset({
    "float", "double", "long double", "Float_t", "Double_t", "Float16_t", "Double32_t",
    "std::float16_t", "float16_t", "std::float32_t", "std::float64_t", "half", "Real_t",
})
#: ROOT integer type names (besides ``[std::][u]intN_t``, matched by ``_ROOT_FIXED_INT``).
_ROOT_INTS = frozenset({
    "char", "signed char", "unsigned char", "short", "short int", "unsigned short",
    "unsigned short int", "int", "signed", "signed int", "unsigned", "unsigned int", "long",
    "long int", "unsigned long", "unsigned long int", "long long", "long long int",
    "unsigned long long", "unsigned long long int", "size_t", "std::size_t", "std::byte",
    "Char_t", "UChar_t", "Short_t", "UShort_t", "Int_t", "UInt_t", "Long_t", "ULong_t",
    "Long64_t", "ULong64_t", "Byte_t", "Ssiz_t",
})
_ROOT_FIXED_INT = re.compile(r"^(std::)?u?int(8|16|32|64)_t$")
#: ``vector<T>`` and the like: one list of values per event (``std::array<T,N>`` too).
_ROOT_LIST = re.compile(
    r"^(std::)?(vector|array|span|set|unordered_set|multiset|unordered_multiset)<.*>$"
    r"|^(ROOT::)?(VecOps::)?RVec<.*>$|^ROOT::VecOps::RVec.*$"
)
#: Wrappers read as the type they hold (``std::optional<T>``: a missing value reads as NaN).
_ROOT_WRAPPER = re.compile(r"^(std::)?(optional|atomic|unique_ptr)<(?P<inner>.*)>$")
_ROOT_CARDINALITY = re.compile(r"^(ROOT::)?(Experimental::)?RNTupleCardinality<.*>$")


def root_kind(typename: str) -> str:
    """The kind (see ``COLUMN_KINDS``) of a TTree leaf or RNTuple field, from its type name.

    TTree names (``Float_t``, ``int32_t``, ``float[]``) and RNTuple names (``std::uint32_t``,
    ``std::vector<float>``, ``ROOT::RVec<int>``, ``std::optional<double>``) are understood;
    any list type is ``jagged``, a type this reader cannot turn into numbers is ``other``.
    """
    name = " ".join(typename.split())
    name = name.replace(" >", ">").replace("< ", "<").replace(", ", ",")
    if name in _ROOT_STRINGS:
        return "string"
    if name.endswith("]") or _ROOT_LIST.match(name):
        return "jagged"
    wrapped = _ROOT_WRAPPER.match(name)
    if wrapped:
        inner = root_kind(wrapped["inner"])
        return inner if inner in NUMERIC_KINDS else "other"
    if name in _ROOT_BOOLS:
        return "bool"
    if name in _ROOT_FLOATS:
        return "float"
    if name in _ROOT_INTS or _ROOT_FIXED_INT.match(name) or _ROOT_CARDINALITY.match(name):
        return "int"
    return "other"


def _tree_kind(classname: str) -> str | None:
    """``TTree`` or ``RNTuple`` for a ROOT class that holds events, else None."""
    if classname.startswith(("TTree", "TNtuple")):
        return "TTree"
    if classname.split("::")[-1] == "RNTuple":
        return "RNTuple"
    return None


def _tree_listing(trees: dict[str, str]) -> str:
    """``TTrees: a, b; RNTuples: c``, or a sentence saying the file holds neither."""
    parts = []
    for kind in ("TTree", "RNTuple"):
        names = [n for n, k in trees.items() if k == kind]
        if names:
            parts.append(f"{kind}s: {', '.join(names)}")
    return "; ".join(parts) or "the file holds no TTree or RNTuple"


def _root_tree(source: Source) -> Any:
    """The TTree or RNTuple of a ROOT file: the one named, or the only one in the file.

    Both have ``typenames``, ``keys``, ``num_entries`` and ``iterate``, which is all the
    reader uses.
    """
    try:
        import uproot
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError(
            f"{source.path}: reading ROOT files needs uproot (pip install 'hep-validator[root]')"
        ) from exc
    try:
        handle = uproot.open(source.path)
        classnames = handle.classnames()
    except read_errors() as exc:
        raise InputError(f"{source.path}: not a readable ROOT file ({_short(exc)})") from exc
    trees: dict[str, str] = {}
    for key, classname in classnames.items():
        kind = _tree_kind(classname)
        if kind is not None:
            trees.setdefault(key.split(";")[0], kind)
    if source.tree is None:
        if len(trees) == 1:
            return _get_tree(handle, next(iter(trees)), source)
        if not trees:
            raise InputError(f"{source.path}: no TTree or RNTuple in the file")
        raise InputError(
            f"{source.path}: holds several trees ({_tree_listing(trees)}); name one as "
            f"{source.path}:NAME"
        )
    name = source.tree
    if name.split(";")[0] not in trees:
        others = {k.split(";")[0]: c for k, c in classnames.items()}
        if name.split(";")[0] in others:
            raise InputError(f"{source.path}: '{name}' is a {others[name.split(';')[0]]}, "
                             "not a TTree or RNTuple")
        raise InputError(
            f"{source.path}: no tree '{name}' ({_tree_listing(trees)}){_hint(name, list(trees))}"
        )
    return _get_tree(handle, name, source)


def _get_tree(handle: Any, name: str, source: Source) -> Any:
    """The object ``name`` of an open ROOT file, checked to be a TTree or an RNTuple."""
    try:
        tree = handle[name]
    except read_errors() as exc:
        raise InputError(f"{source.path}: cannot read '{name}' ({_short(exc)})") from exc
    if not hasattr(tree, "typenames") or not hasattr(tree, "iterate"):
        raise InputError(f"{source.path}: '{name}' is not a TTree or RNTuple")
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
        except read_errors() as exc:
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
        except read_errors() as exc:
            raise InputError(f"{source.path}: not a readable CSV file ({_short(exc)})") from exc
        return kinds, n_rows
    tree = _root_tree(source)
    kinds = {name: root_kind(typename) for name, typename in tree.typenames().items()}
    return kinds, int(tree.num_entries)


def column_titles(sample: Sample, names: Sequence[str]) -> dict[str, str]:
    """The titles of the ROOT branches ``names`` of a sample (uproot ``TBranch.title``) where
    a file has one; RNTuple fields have a ``description`` instead (read alike). Parquet and
    CSV columns have none. The first file giving a column a non-empty title names it.
    :func:`validator.results.display.title_label` decides which are axis labels."""
    out: dict[str, str] = {}
    wanted = set(names) & set(sample.columns)
    for source in sample.sources:
        if source.format != "root" or len(out) == len(wanted):
            continue
        tree = _root_tree(source)
        for name in tree.keys(recursive=False):
            if name in out or name not in wanted:
                continue
            try:
                branch = tree[name]
            except read_errors():
                continue
            title = getattr(branch, "title", None) or getattr(branch, "description", None)
            if isinstance(title, str) and title.strip():
                out[name] = title.strip()
    return out


def open_sample(name: str, specs: Sequence[str], weight: str | None = None) -> Sample:
    """Open the files of one sample and check they can be used together.

    The columns of the sample are those present in every file; a weight column, where named,
    must be numeric and flat in every file.
    """
    if not specs:
        raise InputError(f"--{name}: no input file given")
    sources = tuple(parse_source(spec) for spec in specs)
    columns: dict[str, str] | None = None
    per_source: list[dict[str, str]] = []
    seen: set[str] = set()
    n_rows = 0
    for source in sources:
        kinds, rows = read_schema(source)
        per_source.append(kinds)
        if weight is not None:
            if weight not in kinds:
                raise InputError(f"{source.label}: weight column '{weight}' not found"
                                 f"{_hint(weight, list(kinds))}")
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
                  partial_columns=partial, source_columns=tuple(per_source))


# ---------------------------------------------------------------------------------- reading


def _element_of_lists(offsets: np.ndarray, values: np.ndarray, index: int) -> np.ndarray:
    """Element ``index`` of each list given by ``offsets`` into ``values``.

    A negative ``index`` counts from the end of each list (``-1``: the last element); NaN
    where the list is too short.
    """
    starts, stops = offsets[:-1], offsets[1:]
    position = starts + index if index >= 0 else stops + index
    present = (position >= starts) & (position < stops)
    out = np.full(len(starts), np.nan)
    out[present] = values[position[present]]
    return out


def _list_offsets(column: Any) -> np.ndarray:
    """A list array's offsets (length + 1, int64)."""
    offsets = column.offsets
    dtype = np.int64 if offsets.type.bit_width == 64 else np.int32
    return np.frombuffer(offsets.buffers()[1], dtype=dtype, count=len(offsets),
                         offset=offsets.offset * np.dtype(dtype).itemsize).astype(np.int64)


def _float64_values(column: Any) -> np.ndarray:
    """A float64 arrow array as numpy (a read-only view where it has no null), nulls as NaN.

    Read from the array's buffers: pyarrow's ``to_numpy`` and ``fill_null`` import pandas on
    their first call, half a second in every worker process for nothing a number needs."""
    validity, data = column.buffers()[:2]
    if data is None or column.null_count == len(column):  # empty, or every value null
        return np.full(len(column), np.nan)
    values = np.frombuffer(data, dtype=np.float64, count=len(column), offset=column.offset * 8)
    if column.null_count:
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        values = np.where(bits[column.offset:column.offset + len(column)].astype(bool),
                          values, np.nan)
    return values


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
        offsets = _list_offsets(column)
        # flatten() honours a sliced array's offset (``values`` would not)
        values = _float64_values(column.flatten().cast(pa.float64()))
        offsets = offsets - offsets[0]
        return _element_of_lists(offsets, values, element)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
    if pa.types.is_float32(column.type) and not column.null_count:
        # in numpy, not arrow's pool: the copy's memory is reused by the fill's arrays
        return np.frombuffer(column.buffers()[1], dtype=np.float32, count=len(column),
                             offset=column.offset * 4).astype(np.float64)
    if pa.types.is_boolean(column.type):
        column = pc.cast(column, pa.float64())
    else:
        column = pc.cast(column, pa.float64(), safe=False)
    return _float64_values(column)


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
    Its blocks are sized in bytes, not rows: :func:`_rebatch` cuts them to ``chunk_rows``.
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


def _rebatch(batches: Iterator[Any], chunk_rows: int) -> Iterator[Any]:
    """Regroup arrow record batches into tables of exactly ``chunk_rows`` rows (the last one
    may be shorter), holding at most one incoming batch plus ``chunk_rows`` rows at a time.
    """
    import pyarrow as pa

    pending: list[Any] = []
    n_pending = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        if not pending and batch.num_rows == chunk_rows:
            yield batch
            continue
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending < chunk_rows:
            continue
        table = pa.Table.from_batches(pending)
        start = 0
        while n_pending - start >= chunk_rows:
            yield table.slice(start, chunk_rows)
            start += chunk_rows
        rest = table.slice(start)
        pending = rest.to_batches() if rest.num_rows else []
        n_pending = rest.num_rows
    if n_pending:
        yield pa.Table.from_batches(pending)


def _iter_arrow(source: Source, columns: Sequence[str], chunk_rows: int,
                row_groups: Sequence[int] | None = None) -> Iterator[Any]:
    """Yield pyarrow tables or record batches of exactly ``chunk_rows`` rows (the last one
    may be shorter); of the given parquet ``row_groups`` only, when given."""
    needed, _ = _split_expressions(columns)
    try:
        if source.format == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(source.path).iter_batches(
                batch_size=chunk_rows, columns=needed,
                row_groups=list(row_groups) if row_groups is not None else None,
            )
        else:
            batches, _ = _open_csv(source, needed, chunk_rows)
        yield from _rebatch(batches, chunk_rows)
    except InputError:
        raise
    except read_errors() as exc:
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


def _awkward_element(array: Any, index: int) -> np.ndarray:
    """Element ``index`` (negative: from the end) of each event's list; NaN where too short."""
    import awkward as ak

    counts = ak.to_numpy(ak.fill_none(ak.num(array, axis=1), 0)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = ak.fill_none(ak.values_astype(ak.flatten(array, axis=1), np.float64), np.nan)
    return _element_of_lists(offsets, ak.to_numpy(values), index)


def _awkward_flat(array: Any) -> np.ndarray:
    """A flat awkward array as float64 (a missing value as NaN) or, for text, as objects."""
    import awkward as ak

    content = ak.type(array).content
    if isinstance(content, ak.types.OptionType):
        content = content.content
    if content.parameter("__array__") in ("string", "bytestring"):
        return np.asarray(ak.to_list(ak.fill_none(array, "")), dtype=object)
    values = ak.values_astype(array, np.float64)
    if isinstance(ak.type(array).content, ak.types.OptionType):
        values = ak.fill_none(values, np.nan)
    return ak.to_numpy(values).astype(np.float64, copy=False)


def _iter_root(source: Source, columns: Sequence[str], chunk_rows: int,
               ) -> Iterator[dict[str, np.ndarray]]:
    """Yield chunks of exactly ``chunk_rows`` entries (the last may be shorter) of a TTree or
    RNTuple; both are read through uproot's ``iterate``."""
    tree = _root_tree(source)
    needed, elements = _split_expressions(columns)
    branches = list(tree.keys())
    missing = [c for c in needed if c not in set(branches)]
    if missing:
        raise InputError(f"{source.label}: branch '{missing[0]}' not found"
                         f"{_hint(missing[0], branches)}")
    try:
        for arrays in tree.iterate(needed, step_size=chunk_rows, library="ak"):
            out: dict[str, np.ndarray] = {}
            for expr in columns:
                if expr in elements:
                    base, index = elements[expr]
                    out[expr] = _awkward_element(arrays[base], index)
                    continue
                array = arrays[expr]
                if array.ndim > 1:
                    raise InputError(f"{source.label}: branch '{expr}' is jagged; "
                                     f"name an element such as {expr}[0]")
                out[expr] = _awkward_flat(array)
            yield out
    except InputError:
        raise
    except read_errors() as exc:
        raise InputError(f"{source.label}: read failed ({_short(exc)})") from exc


def _check_readable(sample: Sample, expr: str) -> None:
    """Raise the one-line error saying why ``expr`` cannot be read from ``sample``."""
    match = _ELEMENT.match(expr)
    base = match["name"] if match else expr
    kind = sample.columns.get(base)
    if kind is not None:
        if match:
            raise InputError(
                f"{sample.sources[0].label}: column '{base}' is not jagged; use '{base}'"
            )
        return
    having = [s.label for s, kinds in zip(sample.sources, sample.source_columns, strict=False)
              if base in kinds]
    if having and len(having) == len(sample.sources):
        found = ", ".join(f"{kinds[base]} in {s.label}" for s, kinds
                          in zip(sample.sources, sample.source_columns, strict=True))
        raise InputError(f"{sample.sources[0].label}: column '{base}' has kinds that cannot be "
                         f"read together ({found})")
    if having:
        raise InputError(f"{sample.label_lacking(base)}: column '{base}' not found "
                         f"(it is in {having[0]})")
    raise InputError(f"{sample.label_lacking(base)}: column '{base}' not found"
                     f"{sample.did_you_mean(expr)}")


def iter_chunks(sample: Sample, columns: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS,
                selection: Selection | None = None, partition: Partition | None = None,
                ) -> Iterator[dict[str, np.ndarray]]:
    """Yield the requested columns of every file of ``sample`` in chunks of ``chunk_rows`` rows.

    Each file gives chunks of exactly ``chunk_rows`` rows, its last chunk possibly shorter
    (a selection then drops events from them). Numeric and boolean columns come as float64
    arrays, string columns as object arrays; ``Name[k]`` gives element ``k`` of a jagged
    column per event (``Name[-1]``: the last one), NaN when the event's list is too short.
    The weight column, if the sample has one, is read too. With a ``selection``, only the
    selected events are yielded. With a ``partition`` (:func:`sample_partitions`), only its
    rows are read, numbered as in the whole file.
    """
    if chunk_rows < 1:
        raise InputError(f"chunk size must be at least one row (got {chunk_rows})")
    wanted = list(dict.fromkeys([*columns, *([sample.weight] if sample.weight else [])]))
    extra = selection.columns if selection else ()
    to_read = [c for c in dict.fromkeys([*wanted, *extra]) if c not in VIRTUAL_COLUMNS]
    for expr in to_read:
        if not sample.has(expr):
            _check_readable(sample, expr)
        elif sample.columns.get(expr) == "jagged":
            raise InputError(f"{sample.sources[0].label}: column '{expr}' is jagged; "
                             f"name an element such as {expr}[0]")
    for file_index, source in enumerate(sample.sources):
        if partition is not None and file_index != partition.file:
            continue
        row_groups = partition.row_groups if partition is not None else None
        if source.format == "root":
            chunks = _iter_root(source, to_read, chunk_rows)
        else:
            chunks = (_chunk_from_arrow(b, to_read)
                      for b in _iter_arrow(source, to_read, chunk_rows, row_groups)
                      if b.num_rows)
        entry = partition.start if partition is not None else 0
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
