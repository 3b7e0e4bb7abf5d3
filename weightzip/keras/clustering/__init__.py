"""Trained weight clustering (TFMOT's ``clustering.keras``): :mod:`.api` (``cluster_weights``,
``strip_clustering``, ``cluster_scope``), the :mod:`.wrapper` that trains clustered kernels, the :mod:`.registry`
of clusterable weights, its :mod:`.config`, the training math in :mod:`.ops`. Public names are exported by
:mod:`weightzip.keras`."""
