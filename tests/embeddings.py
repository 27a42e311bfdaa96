"""Embeddings in tests: sentences of mixed lengths, a server of one split point, comparing answers."""
from __future__ import annotations

import numpy as np


def cosines(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two [n, dim] (or [dim]) arrays, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# batch members of different lengths, so that padding is exercised
SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "Short one.",
    "A somewhat longer sentence, so that the batch holds sequences of different lengths and padding.",
]


def start_server(model: str, split: int, name: str):
    """`coinfer server` on a free loopback port (a ServiceProcess: stop it, or use it in a `with`)."""
    from coinfer.lab.launch import ServiceProcess

    return ServiceProcess(["server", "--model", model, "--split", str(split), "--listen", "127.0.0.1:0"],
                          f"{name}-server-{split}")
