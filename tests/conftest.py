import os

import pytest
import torch

# Inductor (torch.compile on CPU) and the JIT extension builds look for the CUDA toolkit through
# CUDA_HOME; on our machines torch's guess from PATH is wrong (notes, section 2).
if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = "/usr/local/cuda"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
