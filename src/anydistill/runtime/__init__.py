"""Run an exported student with onnxruntime, without torch: the deployment path.

``anydistill export`` writes a folder (``export.json`` plus one or two ONNX graphs); this package reads
it and runs it with numpy, Pillow and onnxruntime only. Nothing under ``anydistill.runtime`` imports
torch, and nothing it imports does (``tests/runtime/test_runtime_without_torch.py`` checks it in a fresh
interpreter), so ``anydistill predict --runtime onnx`` and ``anydistill segment --runtime onnx`` run on a
machine where torch is not installed.
"""
