import pytest
import torch

from lowbit.calib import make_estimator


@pytest.fixture
def observe():
    """observe(name, batches, **options) -> a fresh estimator that has seen every batch."""

    def make(name, batches, **options):
        est = make_estimator(name, **options)
        for b in batches:
            est.observe(b)
        return est

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Estimator tests run small ops: one thread avoids oversubscription on the shared 2-core machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
