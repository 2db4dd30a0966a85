"""The PyTorch-native integer path: a QuantizedModel as the ExportedProgram PT2E produces, for torch.compile.

    program = to_exported_program(qmodel, example_inputs)     # torch.export.save(program, "model.pt2") to ship it
    fast = compile_int8(qmodel, example_inputs)                # x86 inductor: oneDNN int8 conv/linear kernels

The program holds the QDQ form (`lowbit.export.qdq.to_qdq` with float biases): uint8 activations through
`quantize_per_tensor -> dequantize_per_tensor`, int8 weight constants through `dequantize_per_channel`, the
pattern torch.compile's x86 inductor backend matches and replaces with oneDNN's quantized convolution and linear
kernels; zero padding before a conv is applied to the integer codes so that the conv reads a dequantize (the only
form inductor lowers to an int8 conv). Inductor needs `freezing` (weights as constants) for that lowering, and
compiles once per input shape (the first call takes tens of seconds on a small CPU).
"""

from __future__ import annotations

import torch

from lowbit.export.qdq import to_qdq
from lowbit.graph.quantized_model import QuantizedModel


def to_exported_program(qmodel: QuantizedModel, example_inputs: tuple, dynamic: bool = True):
    """The QDQ graph exported with torch.export (every input axis dynamic unless `dynamic=False`)."""
    gm = to_qdq(qmodel, int_bias=False, pad_codes=True).eval()
    # copies: a slice of a larger tensor would be saved with its whole storage by torch.export.save
    example_inputs = tuple(t.clone() for t in example_inputs)
    shapes = (tuple({i: torch.export.Dim.AUTO for i in range(t.dim())} for t in example_inputs)
              if dynamic else None)
    return torch.export.export(gm, tuple(example_inputs), dynamic_shapes=shapes, strict=False)


def compile_int8(qmodel: QuantizedModel, example_inputs: tuple, dynamic: bool = False):
    """torch.compile of the exported program's module with freezing on, so that inductor lowers the QDQ patterns
    to int8 kernels. Returns the compiled callable (compilation happens on its first call). Set the thread count
    before that call: inductor writes `torch.get_num_threads()` of that moment into its fused C++ kernels, so a
    program compiled under 1 thread and run under 2 keeps them on one thread (MiniLM at batch 32, 2 threads: 51.7
    ms instead of 50.5, its fp32 program 159.9 instead of 150.4); compile once per thread count you deploy with."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # the int8 weight prepacking passes run only on frozen graphs
    module = to_exported_program(qmodel, example_inputs, dynamic=dynamic).module()
    return torch.compile(module, dynamic=dynamic)
