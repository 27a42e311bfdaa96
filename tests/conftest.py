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


SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job.",
    "Short one.",
]


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)
