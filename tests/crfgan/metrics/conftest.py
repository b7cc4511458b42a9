import numpy as np
import pytest

from crfgan.config import load_config
from crfgan.trainer import load_volumes

SCANS = ("ct/example_ct.nii.gz", "mri/FLAIR.nii.gz", "mri/MNI152_2009_template.nii.gz")


def _real(shared_data, size: int) -> np.ndarray:
    cfg = load_config("tiny", [f"model.image_size={size}"])
    v = load_volumes([shared_data / s for s in SCANS], cfg)
    # six real volumes: the three scans and their left-right mirror images
    return np.concatenate([v, v[..., ::-1]]).astype(np.float32)


@pytest.fixture(scope="session")
def real32(shared_data) -> np.ndarray:
    return _real(shared_data, 32)


@pytest.fixture(scope="session")
def real64(shared_data) -> np.ndarray:
    return _real(shared_data, 64)
