"""Whole-model compression on Keras: :mod:`.deep_compression` (prune -> cluster -> entropy-coded `.wz`, with
retraining) and :mod:`.post_training` (no retraining; sensitivities from :mod:`.calibration`). Public names are
exported by :mod:`weightzip.keras`."""
