import copy

import pytest

from tests.llm.tiny import tiny_llama, token_batches


@pytest.fixture(scope="session")
def tiny_model():
    from lowbit.zoo.smollm2 import CausalLMLogits

    return CausalLMLogits(tiny_llama())


@pytest.fixture(scope="session")
def _captured(tiny_model):
    from lowbit.graph.capture import capture

    return capture(tiny_model, (token_batches(1)[0],))


@pytest.fixture
def tiny_graph(_captured):
    """A fresh copy of the tiny model's captured float graph (capturing once per session saves seconds)."""
    return copy.deepcopy(_captured)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny Llama saved with save_pretrained: config.json + model.safetensors."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    return folder
