"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tests use tiny tensors, where thread start-up dominates; on a loaded 2-core machine two spinning
    intra-op threads made them 10-100x slower (measured). The previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
