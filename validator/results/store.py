"""Store runs in DuckDB: the documented schema is the public contract (see docs/schema.md).

A run is written in one transaction: it is there whole or not at all. DuckDB locks the file per
process, so the writer connects only to write a finished run and readers use short-lived
read-only connections. A finished run is never lost: the database is checked before any work
(:func:`check_database`), a busy one is retried for a bounded time, and if it stays busy the
run goes to a side file (a DuckDB file of its own) that :func:`merge_side_file`
(``validator merge``) adds later.

The schema is versioned (table ``schema_info``): opening a file of an earlier version migrates
it, in the same transaction as the run written (columns are added, never renamed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from validator.errors import InputError
from validator.results.schema import ARROW_TYPES, RUN_TABLES, SCHEMA, SCHEMA_VERSION

__all__ = ["RUN_TABLES", "SCHEMA", "SCHEMA_VERSION"]  # the schema, read beside the store





class DatabaseBusy(Exception):
    """The database stayed locked by another process for the whole wait."""


_DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file
#: How a side file's name ends (a run written beside a busy database, for validator merge).
SIDE_SUFFIX = ".pending.duckdb"


def _connect(path: Path, read_only: bool = False, wait_s: float = 15.0,
             ) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting up to ``wait_s`` while another process holds its lock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise InputError(f"{path}: cannot open the database ({_first_line(exc)})") \
                    from exc
            if time.monotonic() > deadline:
                raise DatabaseBusy(f"{path}: the database stayed locked by another process for "
                                   f"{wait_s:g} s ({_first_line(exc)})") from exc
            time.sleep(0.2)
        except duckdb.Error as exc:
            raise InputError(f"{path}: not a usable DuckDB file ({_first_line(exc)})") from exc


def _is_duckdb(path: Path) -> bool:
    """Whether the file starts as every DuckDB database does."""
    with path.open("rb") as fh:
        return fh.read(12)[8:12] == _DUCKDB_MAGIC


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_database(path: str | Path) -> None:
    """Check, before any work, that a run can be written to ``path``.

    Raises :class:`InputError` for a folder, a missing or read-only folder, a file that is
    not a DuckDB database, or a database of a newer schema. A database busy right now is
    fine: the write waits for it, or goes to a side file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; --db needs a database file")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    if not path.exists():
        if not _writable(folder):
            raise InputError(f"{path}: cannot create the database: the folder {folder} is not "
                             "writable")
        return
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if not _writable(path):
        raise InputError(f"{path}: the database file is not writable")
    if path.stat().st_size == 0:
        return
    if not _is_duckdb(path):
        raise InputError(f"{path}: not a DuckDB database (choose another --db file)")
    try:
        _file_version(path, wait_s=0)
    except DatabaseBusy:
        return


def _file_version(path: Path, wait_s: float = 15.0) -> int:
    """The schema version of a DuckDB file (read-only); :class:`ForeignDatabase` for a file
    that is not validator's, an :class:`InputError` for a newer schema."""
    con = _connect(path, read_only=True, wait_s=wait_s)
    try:
        version = _schema_version(con, str(path))
    finally:
        con.close()
    if version > SCHEMA_VERSION:
        raise InputError(f"{path}: written by a newer validator (schema version {version}; "
                         f"this one reads and writes {SCHEMA_VERSION}); upgrade validator")
    return version


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()}


#: The columns that make a file without ``schema_info`` a release-0.1.0 validator file.
_V1_COLUMNS = {"runs": {"run_id", "started_at", "tool_version", "sim_paths", "data_paths"},
               "tests": {"run_id", "method", "pvalue"}}


class ForeignDatabase(InputError):
    """A DuckDB file holding tables that are not validator's: never written to."""


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND "
        "table_name = ?", [table]).fetchall()}


def _foreign_objects(con: duckdb.DuckDBPyConnection) -> str | None:
    """What a file holds that validator never writes (a table or view outside ``main``, a
    view, a sequence, a macro, a type), named; None for none."""
    queries = (
        ("table", "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
                  "WHERE NOT internal AND schema_name <> 'main'"),
        ("view", "SELECT schema_name || '.' || view_name FROM duckdb_views() WHERE NOT internal"),
        ("sequence", "SELECT sequence_name FROM duckdb_sequences()"),
        ("macro", "SELECT function_name FROM duckdb_functions() WHERE NOT internal"),
        ("type", "SELECT type_name FROM duckdb_types() WHERE NOT internal"),
    )
    for kind, sql in queries:
        found = con.execute(sql).fetchall()
        if found:
            return f"the {kind} {found[0][0]}"
    return None


def _damage(con: duckdb.DuckDBPyConnection) -> str | None:
    """What a file of today's schema lacks or holds differently (a table, a column, a column
    type), named; None for an intact file. Nothing is written to a damaged file, nor read
    from it as if it were intact."""
    found = {(t, c): typ for t, c, typ in con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main'").fetchall()}
    tables = {t for t, _ in found}
    for table, columns in SCHEMA.items():
        if table not in tables:
            return f"table '{table}' is missing"
        for name, typ in columns:
            if (table, name) not in found:
                return f"table '{table}' has no column '{name}'"
            if found[(table, name)] != typ:
                return f"column {table}.{name} is {found[(table, name)]}, not {typ}"
    return None


def _schema_version(con: duckdb.DuckDBPyConnection, label: str = "the database") -> int:
    """The file's schema version: 0 for an empty file, 1 for release 0.1.0's files.

    A file that holds any table but is not validator's (no ``schema_info`` of ours, and not
    a release-0.1.0 file) is a :class:`ForeignDatabase`: a user's own tables are never
    altered."""
    tables = _tables(con)
    foreign = _foreign_objects(con)
    if foreign:
        raise ForeignDatabase(f"{label}: not a validator database (it holds {foreign}); "
                              "choose another --db file")
    if not tables:
        return 0
    if "schema_info" in tables and {n for n, _ in SCHEMA["schema_info"]} <= _columns(
            con, "schema_info"):
        version = con.execute("SELECT max(version) FROM schema_info").fetchone()[0]
        if version is None:
            raise InputError(f"{label}: its schema_info is empty (a damaged validator "
                             "database; restore the file or choose another --db)")
        problem = _damage(con) if int(version) == SCHEMA_VERSION else None
        if problem:
            raise InputError(f"{label}: {problem} (a damaged validator database; restore the "
                             "file or choose another --db)")
        return int(version)
    if "schema_info" not in tables and all(
            table in tables and columns <= _columns(con, table)
            for table, columns in _V1_COLUMNS.items()):
        return 1
    raise ForeignDatabase(
        f"{label}: not a validator database (it holds other tables: "
        f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}); choose "
        "another --db file")


def _add_missing(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and add missing columns (the schema only grows)."""
    for table, columns in SCHEMA.items():
        cols = ", ".join(f'"{name}" {typ}' for name, typ in columns)
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
            [table]).fetchall()}
        for name, typ in columns:
            if name not in have:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')


def _migrate_1_to_2(con: duckdb.DuckDBPyConnection) -> None:
    """2 added ``schema_info``, the run's seed, configuration and package versions, the
    tests' ``not_run_reason``, and plotting/fine histograms (``histograms.binning``): every
    histogram of a version-1 file is a test binning."""
    _add_missing(con)
    con.execute("UPDATE histograms SET binning = 'test' WHERE binning IS NULL")


def _migrate_2_to_3(con: duckdb.DuckDBPyConnection) -> None:
    """3 added the model audit (``importances``, ``criticality``, ``tests.node``, the runs'
    importance rank correlations) and the gate (``gate_results``, ``runs.gate_rules_sha256``)."""
    _add_missing(con)


def _migrate_3_to_4(con: duckdb.DuckDBPyConnection) -> None:
    """4 added the ``corrections`` table (``validator correct`` and the closure runs of
    ``validator run --apply``)."""
    _add_missing(con)


#: ``_MIGRATIONS[v]`` turns a version-v file into version v + 1.
_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Bring the file to :data:`SCHEMA_VERSION` (create it, or migrate it step by step)."""
    version = _schema_version(con)
    if version > SCHEMA_VERSION:
        raise InputError(f"the database was written by a newer validator (schema version "
                         f"{version}; this one writes {SCHEMA_VERSION}); upgrade validator")
    if version == SCHEMA_VERSION:
        _add_missing(con)
        return
    from validator import __version__

    if version == 0:
        _add_missing(con)
    for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
        _MIGRATIONS[step](con)
    con.execute("INSERT INTO schema_info VALUES (?, ?, ?)",
                [SCHEMA_VERSION, datetime.now(timezone.utc).replace(tzinfo=None), __version__])


def _arrow_table(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    columns = SCHEMA[table]
    arrays = {name: pa.array([row.get(name) for row in rows], type=ARROW_TYPES[typ])
              for name, typ in columns}
    return pa.table(arrays)


def _write_tables(path: Path, tables: Mapping[str, pa.Table], wait_s: float,
                  what: str = "run",
                  check: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                  then: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
    """Insert arrow tables in one transaction (schema created or migrated inside it).

    ``check(con)`` runs before the inserts (it may refuse, rolling everything back) and
    ``then(con)`` after them, in the same transaction; ``what`` names the write in errors."""
    con = _connect(path, wait_s=wait_s)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            ensure_schema(con)  # inside the transaction: a failed run adds no column either
            if check is not None:
                check(con)
            for table, arrow in tables.items():
                if arrow.num_rows == 0:
                    continue
                con.register("_incoming", arrow)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _incoming")
                con.unregister("_incoming")
            if then is not None:
                then(con)
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            if isinstance(exc, duckdb.Error):
                raise InputError(f"{path}: the {what} could not be written, nothing was "
                                 f"({_first_line(exc)})") from exc
            raise
    finally:
        con.close()


def write_run(path: str | Path, tables: Mapping[str, Sequence[Mapping[str, Any]]],
              wait_s: float = 15.0) -> None:
    """Write one run's rows (table name -> list of row dicts) in a single transaction.

    Raises :class:`DatabaseBusy` if another process holds the file for ``wait_s`` seconds.
    """
    for table in tables:
        if table not in RUN_TABLES:
            raise ValueError(f"unknown table {table}")
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    _write_tables(path, {t: _arrow_table(t, rows) for t, rows in tables.items()}, wait_s)


def save_verdict(path: str | Path, run_id: str, rows: Sequence[Mapping[str, Any]],
                 passed: bool, rules_name: str, rules_sha256: str, wait_s: float = 60.0
                 ) -> None:
    """Add one gate verdict (rows of ``gate_results``) to a stored run and set its
    ``runs.gate_passed``, ``rules_name`` and ``gate_rules_sha256``, in one transaction.

    A run judged again (another rules file) gets a new verdict set; the run's columns hold
    the latest verdict, ``gate_results`` every one.
    """
    path = Path(path)

    def run_exists(con: duckdb.DuckDBPyConnection) -> None:
        # fetchall: a result left unfinished blocks the register() that follows
        if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?",
                           [run_id]).fetchall()[0][0]:
            raise InputError(f"{path}: no run {run_id} to judge")

    def mark_run(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("UPDATE runs SET gate_passed = ?, rules_name = ?, gate_rules_sha256 = ? "
                    "WHERE run_id = ?", [bool(passed), rules_name, rules_sha256, run_id])

    _write_tables(path, {"gate_results": _arrow_table("gate_results", rows)}, wait_s,
                  what="verdict", check=run_exists, then=mark_run)


def save_corrections(path: str | Path, rows: Sequence[Mapping[str, Any]],
                     wait_s: float = 60.0) -> None:
    """Add ``corrections`` rows of a derived correction (``validator correct``; the source
    run must be in the file) in one transaction."""
    path = Path(path)
    sources = sorted({str(r["source_run_id"]) for r in rows})

    def runs_exist(con: duckdb.DuckDBPyConnection) -> None:
        for run_id in sources:
            if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?",
                               [run_id]).fetchall()[0][0]:
                raise InputError(f"{path}: no run {run_id} (the correction's source)")

    _write_tables(path, {"corrections": _arrow_table("corrections", rows)}, wait_s,
                  what="correction", check=runs_exist)


def side_file_path(path: str | Path, run_id: str) -> Path:
    """Where a run goes when its database stays busy: beside it, named after the run."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{run_id}{SIDE_SUFFIX}")


def save_run(rows: Mapping[str, Sequence[Mapping[str, Any]]], run_id: str, path: str | Path,
             wait_s: float = 60.0) -> tuple[Path | None, Path | None]:
    """Store a finished run's rows (:func:`validator.results.rows.run_rows`); if the database
    stays busy, in a side file instead. Returns (the database, None) when stored there, or
    (None, the side file) to be added with ``validator merge``."""
    try:
        write_run(path, rows, wait_s=wait_s)
        return Path(path), None
    except DatabaseBusy:
        side = side_file_path(path, run_id)
        write_run(side, rows, wait_s=0)
        return None, side


def merge_side_file(path: str | Path, side: str | Path, wait_s: float = 60.0) -> list[str]:
    """Add the runs of a side file to the database in one transaction; returns their ids.

    Runs already in the database are not added twice. The side file is deleted once its
    runs are in.
    """
    path, side = Path(path), Path(side)
    if not side.is_file():
        raise InputError(f"{side}: side file not found")
    if not side.name.endswith(SIDE_SUFFIX):
        raise InputError(f"{side}: not a side file (validator writes them as "
                         f"NAME.RUN_ID{SIDE_SUFFIX} beside a busy database); nothing merged")
    if path.exists() and path.resolve() == side.resolve():
        raise InputError(f"{side}: is the database itself; nothing merged")
    check_database(path)
    if not _is_duckdb(side):
        raise InputError(f"{side}: not a validator side file (not a DuckDB database)")
    con = _connect(side, read_only=True, wait_s=wait_s)
    try:
        try:
            version = _schema_version(con, str(side))
        except ForeignDatabase:
            version = 0
        if version != SCHEMA_VERSION or "runs" not in _tables(con):
            raise InputError(f"{side}: not a validator side file (no runs of schema version "
                             f"{SCHEMA_VERSION}); a side file is written by 'validator run' "
                             "when the database is busy")
        tables = {t: con.sql(f"SELECT * FROM {t}").to_arrow_table() for t in RUN_TABLES
                  if t in _tables(con)}
    finally:
        con.close()
    run_ids = [str(r) for r in tables["runs"].column("run_id").to_pylist()]
    if path.exists() and path.stat().st_size:
        have = set(query(path, "SELECT run_id FROM runs")["run_id"]) if _has_runs(path) else set()
        new = [r for r in run_ids if r not in have]
        if len(new) < len(run_ids):
            import pyarrow.compute as pc

            keep = pa.array(new, type=pa.string())
            tables = {t: a.filter(pc.is_in(a.column("run_id"), value_set=keep))
                      for t, a in tables.items()}
        run_ids = new
    if run_ids:
        _write_tables(path, tables, wait_s)
    side.unlink()
    return run_ids


def _has_runs(path: Path) -> bool:
    con = _connect(path, read_only=True)
    try:
        return "runs" in _tables(con)
    finally:
        con.close()


def query(path: str | Path, sql: str, params: Sequence[Any] | None = None) -> Any:
    """Run a read-only query on a short-lived connection; returns a pandas DataFrame."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: database not found")
    try:
        con = _connect(path, read_only=True)
    except DatabaseBusy as exc:
        raise InputError(str(exc)) from exc
    try:
        return con.execute(sql, params or []).df()
    except (duckdb.CatalogException, duckdb.BinderException) as exc:
        raise InputError(f"{path}: not a validator database, or a damaged one "
                         f"({_first_line(exc)})") from exc
    finally:
        con.close()


def check_readable(path: str | Path) -> int:
    """The schema version of a validator database to read; :class:`InputError` (one line) for
    a missing file, a file that is not DuckDB or not validator's, or a newer schema."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: database not found" if not path.exists()
                         else f"{path}: not a database file")
    if not _is_duckdb(path):
        raise InputError(f"{path}: not a DuckDB database")
    try:
        return _file_version(path)
    except DatabaseBusy as exc:
        raise InputError(str(exc)) from exc


def resolve_run(path: str | Path, run: str = "latest") -> str:
    """The id of ``run``: ``latest``, an id, or an id's unique prefix."""
    if check_readable(path) == 0:
        raise InputError(f"{path}: no run (an empty database)")
    if run == "latest":
        found = query(path, "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
    else:
        found = query(path, "SELECT run_id FROM runs WHERE starts_with(run_id, ?)", [run])
    if len(found) == 0:
        raise InputError(f"{path}: no run '{run}'" if run != "latest" else f"{path}: no run")
    if len(found) > 1:
        raise InputError(f"{path}: '{run}' matches {len(found)} runs; give more of the id")
    return str(found["run_id"].iloc[0])
