"""Entry of the Streamlit dashboard: ``validator dashboard --db FILE`` runs
``streamlit run app.py -- --db FILE``.

It checks the database, puts the run picker in the sidebar (latest run by default; a link's
``?run=ID`` picks another) and hands over to the page chosen in the navigation
(``st.navigation`` over the page files in ``views/``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from validator.dashboard import data, database_problem
from validator.dashboard.common import VIEWS


@st.cache_data(show_spinner=False, max_entries=64)
def _problem(db: str, state: tuple[int, ...]) -> str | None:
    return database_problem(db)


def _run_picker(db: Path) -> None:
    runs = data.runs(db)
    if not len(runs):
        st.session_state["run_id"] = None
        st.sidebar.info("no run in this database yet: validator run ... --db "
                        f"{db.name}")
        return
    ids = [str(r) for r in runs["run_id"]]
    labels = {r["run_id"]: data.run_label(r) for r in data.records(runs)}
    wanted = st.query_params.get("run")
    if wanted and not any(i.startswith(wanted) for i in ids):
        st.warning(f"run '{wanted}' (from the link) is not in this database: showing the "
                   "latest run instead")
    elif wanted and wanted not in ids:
        wanted = next(i for i in ids if i.startswith(wanted))  # a unique prefix, as the CLI
    if wanted in ids and st.session_state.get("_run_from_link") != wanted:
        st.session_state["run_id"] = wanted  # a link chose the run (once per link)
        st.session_state["_run_from_link"] = wanted
    if st.session_state.get("run_id") not in ids:
        st.session_state["run_id"] = ids[0]
    st.sidebar.selectbox(f"run ({len(ids)} in the database, newest first)", ids,
                         key="run_id", format_func=lambda r: labels.get(r, r))


def main() -> None:
    """Check the database, draw the sidebar, run the chosen page."""
    st.set_page_config(page_title="validator dashboard", page_icon=":material/fact_check:",
                       layout="wide")
    db = data.db_path()
    if db is None:
        st.error("no database given: start the dashboard with validator dashboard --db FILE")
        st.stop()
    problem = _problem(str(db), data.stamp(db))
    if problem:
        st.error(problem)
        st.stop()
    st.session_state["db_path"] = str(db)
    pages = [
        st.Page(VIEWS / "overview.py", title="Overview", icon=":material/dashboard:",
                default=True),
        st.Page(VIEWS / "inputs.py", title="Inputs (1D)", icon=":material/bar_chart:"),
        st.Page(VIEWS / "pairs.py", title="Pairs (2D)", icon=":material/grid_on:"),
        st.Page(VIEWS / "model.py", title="Model", icon=":material/hub:"),
        st.Page(VIEWS / "history.py", title="History", icon=":material/timeline:"),
        st.Page(VIEWS / "models.py", title="Models", icon=":material/inventory_2:"),
    ]
    page = st.navigation(pages)
    st.sidebar.caption(f"database: {db}")
    _run_picker(db)
    page.run()


main()
