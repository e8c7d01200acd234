import sys
from pathlib import Path

import pytest
import torch

# tests/oracles.py (tiny diffusers reference models) is imported by several test files
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
    yield
