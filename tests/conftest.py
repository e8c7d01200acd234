import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    """Every test starts from the same global RNG state and fp32 math."""
    torch.manual_seed(0)
    yield
