"""The stages of a run, in the data's order: plan, fill (and its compiled kernels), compare
(the tests), the run-level test, the systematics, the network audit and the multivariate
tests. :mod:`validator.pipeline` orders them."""
