"""Where the work runs: the local pool of worker processes and its server
(:mod:`validator.engine.pool`, :mod:`validator.engine.worker_server`), and Dask."""
