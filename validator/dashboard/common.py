"""What every page shares: the database and run shown, downloads (figures as PNG/PDF, tables
as CSV), long tables with a filter and pages, and the guard that turns any failure into a
message (a page never raises)."""

from __future__ import annotations

import io
import math
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from validator.dashboard import data
from validator.errors import InputError

#: Rows of a long table shown per page.
PAGE_ROWS = 50
#: The page files by name, for links between pages, absolute: the app runs from
#: ``validator/dashboard/app.py`` and from the repository's ``dashboard/app.py`` alike.
VIEWS = Path(__file__).resolve().with_name("views")
PAGE_FILES = {name: str(VIEWS / f"{name}.py")
              for name in ("overview", "inputs", "pairs", "model", "history", "models")}


def db() -> Path:
    """The database shown (app.py checked it before any page runs)."""
    path = st.session_state.get("db_path") or data.db_path()
    if path is None:
        raise InputError("no database: start the dashboard with validator dashboard --db FILE")
    return Path(path)


def run_id() -> str | None:
    """The run picked in the sidebar (None when the database holds no run)."""
    return st.session_state.get("run_id")


def guard(render: Callable[[], None]) -> None:
    """Run a page; a database problem becomes a warning, anything else an error with its
    traceback folded away: the page never raises."""
    try:
        render()
    except InputError as exc:
        st.warning(f"{exc}")
    except Exception as exc:  # a bug: say it, never crash the app
        st.error(f"this page failed: {type(exc).__name__}: {exc}")
        with st.expander("traceback"):
            st.code(traceback.format_exc())


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "figure"


def download_csv(frame: pd.DataFrame, name: str, key: str, label: str = "CSV") -> None:
    """A download button for a table as CSV (list columns written as JSON-like text)."""
    st.download_button(label, frame.to_csv(index=False).encode("utf-8"),
                       file_name=f"{slug(name)}.csv", mime="text/csv", key=key,
                       on_click="ignore", icon=":material/download:")


def figure_bytes(make: Callable[[], Any], fmt: str) -> bytes:
    from validator.output.figures import PNG_DPI, close_figure

    fig = make()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=fmt, dpi=PNG_DPI, bbox_inches="tight")
    finally:
        close_figure(fig)
    return buffer.getvalue()


def matplotlib_available() -> bool:
    """Whether the PNG/PDF figures can be drawn (matplotlib and mplhep, ``[hist]`` extra)."""
    try:
        import matplotlib  # noqa: F401
        import mplhep  # noqa: F401
    except ImportError:
        return False
    return True


def download_figure(make: Callable[[], Any], name: str, key: str) -> None:
    """PNG and PDF download buttons for a figure drawn by ``make`` (a matplotlib figure in
    the CMS style of :mod:`validator.output.figures`), drawn only when a button is clicked."""
    if not matplotlib_available():
        st.caption("PNG/PDF downloads need matplotlib and mplhep: pip install "
                   "'hep-validator[hist]'")
        return
    row = st.container(horizontal=True)
    row.download_button("PNG", lambda: figure_bytes(make, "png"),
                        file_name=f"{slug(name)}.png", mime="image/png", key=f"{key}-png",
                        on_click="ignore", icon=":material/download:")
    row.download_button("PDF", lambda: figure_bytes(make, "pdf"),
                        file_name=f"{slug(name)}.pdf", mime="application/pdf",
                        key=f"{key}-pdf", on_click="ignore", icon=":material/download:")


def plotly_available() -> bool:
    """Whether the interactive figures can use plotly (else matplotlib images)."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def show_figure(interactive: Callable[[], Any] | None, static: Callable[[], Any] | None,
                name: str, key: str, *, fit: bool = False, select: bool = False) -> Any:
    """Show a figure: the plotly version when plotly is installed, else the matplotlib one as
    an image; then its PNG/PDF downloads (from the matplotlib version).

    ``fit``: the figure keeps the width it sets (a square matrix sized to its cells, not
    stretched into grey margins). ``select``: clicking a point reruns the page and the
    selection is returned (Streamlit's ``on_select``; None otherwise)."""
    event = None
    if interactive is not None and plotly_available():
        event = st.plotly_chart(interactive(), key=f"{key}-chart",
                                config={"displaylogo": False},
                                width="content" if fit else "stretch",
                                on_select="rerun" if select else "ignore",
                                selection_mode="points")
    elif static is not None and matplotlib_available():
        st.image(figure_bytes(static, "png"))
    if static is not None:
        download_figure(static, name, key)
    return event if select else None


def selected_points(event: Any) -> list[dict[str, Any]]:
    """The points of a plotly selection event (:func:`show_figure` with ``select``)."""
    try:
        return list(event["selection"]["points"])
    except (KeyError, TypeError):
        return []


def table(frame: pd.DataFrame, name: str, key: str, *, page_rows: int = PAGE_ROWS,
          column_config: dict[str, Any] | None = None, filter_columns: list[str] | None = None,
          ) -> pd.DataFrame:
    """A long table with a text filter (over ``filter_columns``, default every text column),
    pages of ``page_rows`` rows and a CSV download of the filtered rows; returns them."""
    shown = frame
    if len(frame) > 10:
        text = st.text_input("filter", key=f"{key}-filter", placeholder="type to filter rows",
                             label_visibility="collapsed")
        if text:
            cols = filter_columns or [c for c in frame.columns if frame[c].dtype == object]
            mask = pd.Series(False, index=frame.index)
            for c in cols:
                mask |= frame[c].astype(str).str.contains(text, case=False, regex=False)
            shown = frame[mask]
    n_pages = max(1, math.ceil(len(shown) / page_rows))
    page = 1
    if n_pages > 1:
        page = int(st.number_input(f"page (of {n_pages}, {len(shown):,} rows)", 1, n_pages, 1,
                                   key=f"{key}-page"))
    st.dataframe(shown.iloc[(page - 1) * page_rows: page * page_rows], hide_index=True,
                 column_config=column_config, width="stretch")
    download_csv(shown, name, key=f"{key}-csv")
    return shown


def fmt_p(p: Any, bound: bool = False) -> str:
    """A p-value as every face writes it (:func:`validator.results.format.format_p`)."""
    from validator.results.format import format_p

    return format_p(p, bound=bool(bound))


#: Test columns shown in tables, in order.
TEST_COLUMNS = ["test_id", "category", "kind", "method", "feature_x", "feature_y", "node",
                "pvalue", "p_holm", "effect_size", "effect_name", "reliable", "passed",
                "pvalue_method", "n_toys", "statistic", "ndf", "not_run_reason"]


def test_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``tests`` a reader wants, in order."""
    return frame[[c for c in TEST_COLUMNS if c in frame.columns]]


P_FORMAT = {"pvalue": st.column_config.NumberColumn("p", format="%.3e"),
            "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3e"),
            "effect_size": st.column_config.NumberColumn("effect", format="%.4g")}
