"""lowbit's benchmark harness: fp32 baselines, peer quantizers and lowbit variants, measured side by side."""
