"""``anydistill bench``: speed (and, optionally, quality) of several models in one run.

Latency at batch 1 and throughput at a larger batch, for each model and each backend (PyTorch eager,
channels_last, ``torch.compile``, onnxruntime), measured round-robin with the thread count pinned, so
a change of the machine's load hits every row alike; parameters, GFLOPs, peak memory; quality on a
data set when asked; a table, a JSON file and a Pareto picture (quality against latency).
"""
