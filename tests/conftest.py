import os

import pytest
import torch

# Two cores here and in CI: keep torch from oversubscribing when pytest runs in parallel.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
