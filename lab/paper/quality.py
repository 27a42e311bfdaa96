"""Measured quality of split, pruned sentence embeddings (MiniLM), not only the bound.

Two measures on the project's paraphrase set (coinfer.lab.paper.pairs):

* cosine similarity of each pruned embedding to the unpruned one, over queries and passages;
* retrieval accuracy: each query's nearest passage (cosine, both embedded by the pruned model) is
  its own paraphrase, top-1 over all paraphrases.

`SplitPipeline` runs the real halves in one process: `DevicePart` (embedding + blocks 1..k) and
`ServerPart` (blocks k+1..L + pooling), each pruned by its own `Pruner` exactly as the device and
server processes prune theirs, and the hidden states handed over through the activation codec.
(End to end through processes and the channel: coinfer.lab.paper.e2e.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


class SplitPipeline:
    """Device and server halves of one model at split k, pruned independently, in one process."""

    def __init__(self, src, k: int, codec: str = "fp32"):
        from coinfer.pruning import Pruner
        from coinfer.split import DevicePart, ServerPart

        self.src, self.k, self.codec = src, k, codec
        self.device = DevicePart(src, k)
        self.server = None if self.device.runs_alone else ServerPart(src, k)
        self.pruners = {"device": Pruner(self.device.linear_layers(), seed=src.seed, head_dim=src.head_dim)}
        if self.server is not None:
            self.pruners["server"] = Pruner(self.server.linear_layers(), seed=src.seed, head_dim=src.head_dim)

    def prune(self, rho_device: float, rho_server: float, method: str = "magnitude") -> None:
        self.pruners["device"].apply(rho_device, method)
        if "server" in self.pruners:
            self.pruners["server"].apply(rho_server, method)

    @torch.inference_mode()
    def embed(self, sentences: list[str], batch: int = 32) -> torch.Tensor:
        from coinfer.codecs import decode, encode

        out = []
        for i in range(0, len(sentences), batch):
            ids, mask = self.src.tokenize(sentences[i:i + batch])
            hidden = self.device(ids, mask)
            if self.server is not None:
                if self.k > 0:   # what the wire carries: the codec's round trip
                    hidden = decode(encode(hidden, self.codec), "hidden_states")
                hidden = self.server(hidden, mask)
            out.append(hidden.float())
        return torch.cat(out)


@dataclass
class QualityPoint:
    method: str
    rho_device: float
    rho_server: float
    cosine_mean: float        # mean cosine(pruned, unpruned) over queries and passages
    cosine_min: float
    retrieval_acc: float      # top-1, queries -> passages
    retrieval_acc_ref: float  # the same for the unpruned model

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def retrieval_accuracy(queries: torch.Tensor, passages: torch.Tensor) -> float:
    """Fraction of queries whose most similar passage (cosine) is the one at the same index."""
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    p = torch.nn.functional.normalize(passages.double(), dim=1)
    best = (q @ p.T).argmax(dim=1)
    return float((best == torch.arange(len(q))).double().mean())


def measure(pipe: SplitPipeline, queries: list[str], passages: list[str], reference: tuple[torch.Tensor, torch.Tensor],
            method: str, rho_device: float, rho_server: float) -> QualityPoint:
    pipe.prune(rho_device, rho_server, method)
    eq, ep = pipe.embed(queries), pipe.embed(passages)
    rq, rp = reference
    cos = torch.cat([cosine_rows(eq, rq), cosine_rows(ep, rp)])
    return QualityPoint(method, rho_device, rho_server, float(cos.mean()), float(cos.min()),
                        retrieval_accuracy(eq, ep), retrieval_accuracy(rq, rp))


def quality_vs_rho(src, k: int, ratios, methods=("magnitude", "random", "structured"),
                   codec: str = "fp32") -> list[QualityPoint]:
    """Both halves pruned to each rho, for each method, at split k."""
    from coinfer.lab.paper.pairs import passages, queries

    pipe = SplitPipeline(src, k, codec)
    qs, ps = queries(), passages()
    pipe.prune(1.0, 1.0)
    reference = (pipe.embed(qs), pipe.embed(ps))
    points = [measure(pipe, qs, ps, reference, m, float(r), float(r)) for m in methods for r in ratios]
    pipe.prune(1.0, 1.0)
    return points
