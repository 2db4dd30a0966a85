"""Peer quantizers (onnxruntime, torchao, NNCF), one file per peer, registered like any other variant."""
