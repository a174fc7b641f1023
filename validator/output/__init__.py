"""What a reviewer reads: the terminal summary (:mod:`validator.output.terminal`), the
Markdown and HTML reports, and the figures. Each renders a
:class:`~validator.results.reading.RunReading`; none re-derives it."""
