"""write_report on a small synthetic model: HTML, PNGs, the kept-float table and the JSON beside it."""

import json
import re

import pytest
import torch
from torch import nn

from lowbit.analysis.report import DEFAULT_SAMPLES, write_report
from lowbit.analysis.summary import fp32_bytes
from lowbit.api import quantize
from lowbit.calib import METHODS
from lowbit.config import LayerRule, preset

HEAD_REASON = "classifier head: tiny and sensitive"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        y = torch.relu(self.conv2(y)).mean(dim=(2, 3))
        return self.head(y)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Net().eval()
    batches = [(torch.randn(4, 3, 12, 12),) for _ in range(3)]
    config = preset("w8a8").with_rules(LayerRule(pattern="head", keep_float=True, reason=HEAD_REASON))
    qmodel = quantize(model, batches, config, progress=False)
    out = tmp_path_factory.mktemp("report")
    path = write_report(
        qmodel,
        batches,
        out,
        float_model=model,
        metrics_before={"cosine": 1.0},
        metrics_after={"cosine": 0.99},
        latency={"fp32_ms": 1.0, "quantized_ms": 2.0, "note": "sim"},
    )
    return model, batches, qmodel, out, path


def test_html_references_every_png(report):
    _, _, _, out, path = report
    html = path.read_text()
    pngs = {p.name for p in out.glob("*.png")}
    referenced = set(re.findall(r'<img src="([^"]+)"', html))
    assert {"sensitivity.png", "cumulative.png", "ranges_1.png", "ranges_2.png"} <= pngs
    assert referenced == pngs
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kept_float_table_lists_the_excluded_layer(report):
    _, _, qmodel, out, path = report
    html = path.read_text()
    kept = html[html.index("<h2>Kept in float</h2>") :]
    assert '<td class="">head</td>' in kept and HEAD_REASON in kept
    data = json.loads((out / "report.json").read_text())
    assert data["kept_float"] == {"head": {"type": "Linear", "why": HEAD_REASON}}
    assert [e["layer"] for e in data["sensitivity"]] and "head" not in {
        e["layer"] for e in data["sensitivity"]
    }
    assert len(data["cumulative"]) == len(qmodel.quantized_layers()) == 2


def test_json_summary_sizes_and_ranges(report):
    model, batches, qmodel, out, _ = report
    data = json.loads((out / "report.json").read_text())
    assert (
        data["sizes"]["fp32_bytes"]
        == fp32_bytes(model)
        == sum(
            t.numel() * 4 for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()
        )
        + 8
    )  # BatchNorm's num_batches_tracked is one int64
    assert data["sizes"]["quantized_bytes"] == qmodel.weight_bytes()["total"] < data["sizes"]["fp32_bytes"]
    by_layer = {r["layer"]: r for r in data["ranges"]}
    conv1 = by_layer["conv1"]  # conv1's input is the model input: minmax is its exact range
    x = torch.cat([b[0] for b in batches])[:DEFAULT_SAMPLES]  # the report analyses the first rows only
    assert data["analysis_samples"] == DEFAULT_SAMPLES
    assert conv1["ranges"]["minmax"] == pytest.approx([x.min().item(), x.max().item()], rel=1e-6)
    assert set(conv1["ranges"]) | set(conv1["errors"]) == set(METHODS)
    for lo, hi in conv1["ranges"].values():
        assert lo <= hi
    used_lo, used_hi = conv1["used"]  # calibrated on all 12 rows: covers the 8 analysed ones
    assert used_lo <= x.min().item() and used_hi >= x.max().item()
    assert data["metrics_after"] == {"cosine": 0.99} and data["latency"]["note"] == "sim"
