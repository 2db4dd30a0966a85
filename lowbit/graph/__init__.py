"""Model <-> quantizable graph: capture with torch.export, fold BN, place quantizers."""
