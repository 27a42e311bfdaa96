"""Shared fixtures. Models load from local folders only; nothing may reach a hub."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    from coinfer.models import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="session")
def tiny_bert():
    from coinfer.models import resolve_model

    return resolve_model("random:bert-tiny")


@pytest.fixture(scope="session")
def tiny_bart():
    from coinfer.models import resolve_model

    return resolve_model("random:bart-tiny")


@pytest.fixture(scope="session")
def minilm_sentence_transformer():
    """The embedded all-MiniLM-L6-v2 as sentence-transformers runs it whole: the reference answer."""
    from sentence_transformers import SentenceTransformer

    from coinfer.models import embedded_model_path

    return SentenceTransformer(str(embedded_model_path()), device="cpu")


SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "Short one.",
]


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)
