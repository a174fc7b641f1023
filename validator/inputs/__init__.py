"""The data's way in: reading samples (:mod:`validator.inputs.sources`) and the per-chunk
selection, derived columns and blinding (:mod:`validator.inputs.transform`)."""
