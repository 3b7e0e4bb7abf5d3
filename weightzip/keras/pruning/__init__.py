"""Magnitude pruning (TFMOT's ``sparsity.keras``): :mod:`.api` (``prune_low_magnitude``, ``strip_pruning``,
``prune_scope``), the masking :mod:`.wrapper`, the training :mod:`.callbacks` and the :mod:`.registry` of prunable
weights. Public names are exported by :mod:`weightzip.keras`."""
