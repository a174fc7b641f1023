"""A run's options: one table (:mod:`validator.config.options`) from which the command line,
the configuration file (:mod:`validator.config.file`) and :class:`~validator.config.run.RunConfig`
are built."""
