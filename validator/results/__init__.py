"""A stored run, read once: the one loader of its tables (:mod:`validator.results.tables`),
the one interpretation of them (:mod:`validator.results.reading`: what is mismodelled, by
which tests, and the verdict of rules) and the one p-value formatter
(:mod:`validator.results.format`). The terminal, ``validator show``, the reports, JUnit, the
dashboard and the gate render what these give; none re-derives it."""
