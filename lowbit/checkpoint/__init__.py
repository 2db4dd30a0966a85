"""Quantized checkpoints: `lowbit.save(qmodel, folder)` and `lowbit.load(folder, model)`.

A checkpoint folder holds two files:
- `model.safetensors`: each quantized weight as packed integer codes (int8 one per byte, int4 two, int2 four,
  binary eight; codebook and float qtypes as level indices) with its scales, zero points and compressed scale
  storage; the activation quantizers' QParams; every other tensor of the graph (biases, norms, float layers) as
  is. The float weights of quantized layers are not stored: on load they are set to their dequantized values.
- `lowbit.json`: format version, lowbit version, the QuantConfig, per-quantizer metadata, the example input
  shapes and dtypes, and the sha256 of `model.safetensors`.

As with Hugging Face checkpoints, the architecture comes from code and the weights from the file:

    lowbit.save(qmodel, "ckpt")
    qmodel = lowbit.load("ckpt", MyNet())        # MyNet's own weights are ignored; outputs equal bit for bit

A checkpoint does not hold the graph itself (no `model.pt2`): `load` needs the float model's code.
"""

from lowbit.checkpoint.files import CheckpointError
from lowbit.checkpoint.loading import load
from lowbit.checkpoint.saving import FORMAT_VERSION, save

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "save"]
