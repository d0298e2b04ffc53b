
import pytest
import torch

# One torch thread, as `bench run` uses by default: on a busy 2-core machine two OpenMP threads made
# small autograd graphs ~9x slower and some elementwise ops ~100x slower.
torch.set_num_threads(1)


@pytest.fixture
def results_dir(tmp_path):
    return tmp_path / "results"
