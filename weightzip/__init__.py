"""weightzip: make trained networks small for deployment.

Pruning, trained quantization by weight clustering (weight sharing) and Huffman-coded storage, after
Han, Mao & Dally, "Deep Compression" (ICLR 2016), with a TFMOT-compatible Keras 3 API and a PyTorch
front end. The algorithms live once, in :mod:`weightzip.core` (NumPy only).
"""

__version__ = "0.1.0"
