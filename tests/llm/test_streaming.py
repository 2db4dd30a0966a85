"""Layer-by-layer streaming from safetensors gives the same model as whole-model quantization."""

import json

import torch
from click.testing import CliRunner

import lowbit
from lowbit import metrics
from lowbit.cli import main
from lowbit.core.primitives import fake_quantize
from lowbit.llm.command import perplexity_score
from lowbit.llm.hf import CheckpointSource
from lowbit.llm.streaming import stream_quantize
from tests.llm.tiny import SEQ, VOCAB, token_batches


def test_streaming_gptq_equals_whole_model_gptq(tiny_model, tiny_folder, tmp_path):
    calib, ev = token_batches(2), token_batches(1, seed=7)
    config = lowbit.preset("w4a16-gptq")
    whole = lowbit.quantize(tiny_model, [(c,) for c in calib], config)
    chunks: list[tuple[slice, torch.Tensor]] = []
    result = stream_quantize(CheckpointSource(tiny_folder), calib, config, eval_ids=ev,
                             score=lambda i, at, out: chunks.append((at, out)) or out.sum(), out=tmp_path / "q",
                             eval_rows=8)
    assert len(chunks) > 1  # scored a few positions at a time, never the whole batch's logits at once
    assert [(at.start, at.stop) for at, _ in chunks] == list(zip(
        [0] + [at.stop for at, _ in chunks[:-1]], [at.stop for at, _ in chunks[:-1]] + [SEQ], strict=True))
    logits = torch.cat([out for _, out in chunks], dim=1)
    with torch.no_grad():
        expected = whole(ev[0])
        assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
        assert torch.allclose(result.eval_summaries[0], expected.sum(), rtol=1e-4)
        assert not torch.allclose(expected, tiny_model(ev[0]), atol=1e-3)  # it did quantize
    info = whole.layers["lm.model.layers.1.mlp.down_proj"]
    wq = whole.graph_module.get_submodule(info.weight_quantizer)
    assert not torch.equal(wq.w_hat, fake_quantize(whole.weight_of(info), wq.qparams))  # GPTQ, not rounding
    assert [s["stage"] for s in result.stages] == ["model.layers.0", "model.layers.1", "head"]
    assert 4.0 < result.bits_per_weight < 4.6  # int4 + per-group scales and zero points
    # the written checkpoint is an ordinary Hugging Face model holding the quantized weights
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q", attn_implementation="eager").eval()
    down = reloaded.model.layers[1].mlp.down_proj.weight
    assert torch.equal(down, wq.w_hat)
    head = whole.graph_module.get_submodule(whole.layers["lm.lm_head"].weight_quantizer)
    assert not reloaded.config.tie_word_embeddings  # the quantized head is stored beside the float embedding
    assert torch.equal(reloaded.lm_head.weight, head.w_hat)
    assert torch.equal(reloaded.model.embed_tokens.weight, tiny_model.lm.model.embed_tokens.weight)


def test_perplexity_score_adds_up_over_chunks_of_positions():
    ids = token_batches(1)[0]
    logits = torch.randn(ids.shape[0], SEQ, VOCAB, generator=torch.Generator().manual_seed(3))
    score = perplexity_score([ids])
    whole = score(0, slice(None), logits)
    parts = sum(score(0, slice(a, b), logits[:, a:b]) for a, b in ((0, 5), (5, 11), (11, SEQ)))
    assert whole[1] == parts[1] == ids.shape[0] * (SEQ - 1)  # the last position predicts nothing
    assert torch.allclose(whole[0], torch.tensor(metrics.token_nll(logits[:, :-1], ids[:, 1:])[0],
                                                 dtype=torch.float64))
    assert torch.allclose(parts, whole)


def test_cli_quantize_llm_on_a_user_folder(tiny_folder, tmp_path):
    ids = tmp_path / "ids.pt"
    torch.save(torch.cat(token_batches(3)), ids)
    res = CliRunner().invoke(main, ["quantize-llm", "--model", str(tiny_folder), "--preset", "w8a8-dynamic",
                                    "--pass", "smoothquant:alpha=0.6", "--calib", str(ids), "--eval", str(ids),
                                    "--n-calib", "4", "--n-eval", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["layers"] == 2 and out["calib_windows"] == 4 and out["eval_windows"] == 2
    assert 1.0 < out["perplexity"] < 1000.0 and 8.0 < out["bits_per_weight"] < 8.6
