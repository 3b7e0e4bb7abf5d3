"""Quantisation-aware training, alone or preserving sparsity and clusters (QAT, PQAT, CQAT, PCQAT): :mod:`.api`
(``quantize_model``, ``strip_quantization``, ``quantize_scope``), the fake-quantising :mod:`.wrapper` and its
:mod:`.ops`. Public names are exported by :mod:`weightzip.keras`."""
