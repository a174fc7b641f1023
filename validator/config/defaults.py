"""Defaults of a run that several stages read; importing this imports nothing (the workers
read it too)."""

#: Most equal-population bins per feature: beyond it the bins hold too few events for the
#: binned tests' asymptotics and the pair histograms grow as its square.
MAX_BINS = 200
#: The seed of a run unless one is given, for the CLI and the API alike.
DEFAULT_SEED = 20261123
#: How long a finished run waits for a busy database before going to a side file.
DEFAULT_DB_WAIT_S = 60.0
#: Data events in the multivariate subsample (the simulation's 5x as many): the c2st
#: permutations and the nplm toys (49 each) then take about 40 s and 50 s on the sample data on
#: two shared cores (``benchmarks/bench_multivariate.py``).
MULTIVARIATE_EVENTS = 20_000
