"""Large language models: SmoothQuant, GPTQ, AWQ, LLM.int8() decomposition and layer-by-layer streaming.

The four methods are post-training passes (`lowbit.ptq.PASSES`), usable from the API, a config and the CLI:
    lowbit.quantize(model, calib, lowbit.preset("w4a16", passes=(PassSpec("gptq"),)))
    lowbit quantize --model smollm2 --preset w4a16 --pass gptq:act_order=true
NF4/FP4 weights with QLoRA double quantization are a QuantSpec (`double_quant=True`, preset "nf4-dq").
`lowbit.llm.streaming.stream_quantize` quantizes a Hugging Face causal LM one decoder layer at a time from its
safetensors file, with peak memory near one layer plus the calibration activations.
"""

from lowbit.llm import awq, gptq, llm_int8, smoothquant  # noqa: F401  (registration of the passes)

__all__ = ["awq", "gptq", "llm_int8", "smoothquant"]
