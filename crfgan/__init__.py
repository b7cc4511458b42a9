"""CRF-GAN: memory-efficient 3D high-resolution medical image synthesis with CRF-guided GANs.

Shiri, Bruno, Loiacono, "Memory-Efficient 3D High-Resolution Medical Image Synthesis Using CRF-Guided GANs"
(ICPR 2024 workshops, arXiv:2503.10899); reference code mahshid1998/CRF-GAN, a fork of HA-GAN (batmanlab/HA-GAN).
This package is single-process PyTorch and NumPy; Ray lives in ``pipelines/``.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so ``import crfgan`` stays light (no torch) for code that only needs the version or the config.
    if name == "load_generator":
        from .checkpoint import load_generator

        return load_generator
    raise AttributeError(f"module 'crfgan' has no attribute {name!r}")
