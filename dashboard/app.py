"""The Streamlit dashboard of a validator database, to run or deploy from the repository:

    streamlit run dashboard/app.py -- --db validation.duckdb

``validator dashboard --db FILE`` serves the same app, whose pages live in the package
(``validator/dashboard/``, importable and tested there): this file runs that app's script.
"""

import runpy

from validator.dashboard import APP

runpy.run_path(str(APP), run_name="__main__")
