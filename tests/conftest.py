import os
import sys

import pytest
import torch

# Tests run on 2 CPU cores: one intra-op thread per process keeps parallel pieces (DDP) from thrashing.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TESTS = os.path.dirname(__file__)
ROOT = os.path.dirname(TESTS)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture
def config_path():
    return lambda name: os.path.join(ROOT, "configs", name)
