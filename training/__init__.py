"""Offline training: FER2013 (or any labelled faces) to verified TorchScript and ONNX artifacts."""
