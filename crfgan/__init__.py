"""CRF-GAN: memory-efficient 3D high-resolution medical image synthesis with CRF-guided GANs.

Shiri, Bruno, Loiacono, "Memory-Efficient 3D High-Resolution Medical Image Synthesis Using CRF-Guided GANs"
(ICPR 2024 workshops, arXiv:2503.10899); reference code mahshid1998/CRF-GAN, a fork of HA-GAN (batmanlab/HA-GAN).
This package is single-process PyTorch and NumPy; Ray lives in ``pipelines/``.
"""

__version__ = "0.1.0"
