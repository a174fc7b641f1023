"""The CI gate: rules files (:mod:`validator.gate.rules`), the judge of a stored run
(:mod:`validator.gate.judge`) and its JUnit report (:mod:`validator.gate.junit`)."""
