"""The Python API (`from coinfer import SplitModel`) against real `coinfer server` processes."""
import asyncio
import subprocess
import sys

import numpy as np
import pytest
import torch

from coinfer import AsyncSplitModel, SplitModel
from coinfer.errors import UsageError
from coinfer.lab.launch import ServiceProcess
from embeddings import SENTENCES, cosines

MINILM_BLOCKS = 6
@pytest.fixture(scope="module")
def servers(split_servers):
    """MiniLM servers at k = 0, 2, L and a BART one (shared with the HTTP tests: tests/conftest.py)."""
    return split_servers


@pytest.fixture(scope="module")
def bart_server(servers):
    return servers["bart"]


@pytest.fixture(scope="module")
def reference(minilm_sentence_transformer):
    return minilm_sentence_transformer


def test_import_coinfer_stays_light():
    code = ("import sys, coinfer; heavy = [m for m in ('torch', 'grpc') if m in sys.modules]; "
            "assert not heavy, heavy; assert 'SplitModel' in dir(coinfer); "
            "from coinfer import SplitModel; from coinfer.device.api import SplitModel as S; assert S is SplitModel")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("k", [0, 2, MINILM_BLOCKS])
def test_encode_equals_sentence_transformers_at_the_servers_split(k, servers, reference):
    minilm_server = servers[k]
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    with SplitModel(server=minilm_server.address, model="minilm") as model:  # no split point given
        assert (model.split, model.epoch) == (k, 0)
        assert f"split={k}" in repr(model) and minilm_server.address in repr(model)
        assert model.last_plan is None  # nothing answered yet
        got = model.encode(SENTENCES, normalize_embeddings=True)
        assert isinstance(got, np.ndarray) and got.shape == expected.shape and got.dtype == np.float32
        about = model.last_plan  # what produced the answer: the server's static plan, rho_server from its Info
        assert (about["plan_epoch"], about["k"], about["rho_device"], about["rho_server"]) == (0, k, 1.0, 1.0)
        assert about["predicted_quality"] == 1.0 and about["codec"] == "fp32" and about["plan_source"] == "static"
        assert about["clock"] in ("cpufreq", "fixed") and model.plan_info() == about
        assert cosines(got, expected).min() >= 0.99999
        # the server half already normalises MiniLM: asking again changes nothing
        assert np.allclose(model.encode(SENTENCES), got, atol=1e-6)
        one = model.encode(SENTENCES[1])
        assert one.shape == (expected.shape[1],) and cosines(one, expected[1]) >= 0.99999


def test_many_sentences_come_back_in_input_order(servers, reference):
    sentences = [f"sentence number {i}: " + "word " * (i % 17) for i in range(300)]
    with SplitModel(server=servers[2].address) as model:
        got = model.encode(sentences, batch_size=32)
        big = model.encode(sentences[:260], batch_size=1000)  # capped at the server's 256 per request
    expected = reference.encode(sentences, batch_size=32, normalize_embeddings=True)
    assert got.shape == (300, expected.shape[1])
    assert cosines(got, expected).min() >= 0.99999  # row by row: each sentence at its own index
    assert cosines(big, expected[:260]).min() >= 0.99999


def test_output_types_follow_sentence_transformers(servers, reference):
    with SplitModel(server=servers[2].address) as model:
        tensor = model.encode(SENTENCES[:2], convert_to_tensor=True, convert_to_numpy=True)
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 384)
        assert isinstance(model.encode("one", convert_to_tensor=True), torch.Tensor)
        listed = model.encode(SENTENCES[:2], convert_to_numpy=False)
        assert isinstance(listed, list) and all(isinstance(t, torch.Tensor) for t in listed)
        assert torch.allclose(torch.stack(listed), tensor, atol=1e-6)
        empty = model.encode([])
        assert isinstance(empty, np.ndarray) and empty.shape == reference.encode([]).shape
        assert model.encode([], convert_to_tensor=True).shape == (0,)
        assert np.allclose(model.encode(SENTENCES[:2], show_progress_bar=True), tensor.numpy(), atol=1e-6)
        with pytest.raises(UsageError, match="generate.*encode"):
            model.generate("not a generator")
    assert "closed" in repr(model)
    with pytest.raises(UsageError, match="closed"):
        model.encode("after close")


def test_a_server_of_another_model_is_refused(bart_server):
    with pytest.raises(UsageError) as refused:
        SplitModel(server=bart_server.address, model="minilm")
    message = str(refused.value)
    assert "random:bart-tiny" in message and "all-MiniLM-L6-v2" in message and bart_server.address in message


def test_unknown_options_are_refused_and_security_is_configured():
    from coinfer import security
    from coinfer.device.api import _security

    assert _security({"token": "t", "tls_ca": "ca.pem", "tls_server_name": "edge"}) == \
        security.Security(token="t", ca="ca.pem", server_name="edge")
    with pytest.raises(UsageError, match="unknown option 'split'"):
        SplitModel(server="127.0.0.1:1", split=2)


def test_async_twin_gives_the_same_vectors(servers):
    async def run(address):
        async with AsyncSplitModel(server=address, model="minilm") as model:
            assert "split=2" in repr(model)
            return await asyncio.gather(model.encode(SENTENCES), model.encode(SENTENCES[::-1]),
                                        model.encode(SENTENCES[0]))

    async def plan_of_one(address):
        async with AsyncSplitModel(server=address, model="minilm") as model:
            assert model.last_plan is None
            await model.encode(SENTENCES[:2])
            return model.last_plan

    assert asyncio.run(plan_of_one(servers[2].address))["k"] == 2
    forward, backward, one = asyncio.run(run(servers[2].address))
    with SplitModel(server=servers[2].address) as model:
        expected = model.encode(SENTENCES)
    assert np.allclose(forward, expected, atol=1e-6) and np.allclose(backward, expected[::-1], atol=1e-6)
    assert np.allclose(one, expected[0], atol=1e-6)


def test_bart_generate_equals_transformers_generate(bart_server):
    """SplitModel.generate through a real server gives the text transformers' own generate gives for
    the whole model (BartForConditionalGeneration with the same weights, beam search included)."""
    import torch
    from transformers import BartForConditionalGeneration

    from coinfer.models import resolve_model

    texts = ["generate something", "and another, longer input to generate from"]
    src = resolve_model("random:bart-tiny")
    src.skeleton  # noqa: B018 - settles the config's attention implementation, as the halves do
    whole = BartForConditionalGeneration(src.config)
    src.load_into(whole)
    whole.eval()
    with torch.inference_mode():
        ids, mask = src.tokenize(texts)
        tokens = whole.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, num_beams=2)
    expected = src.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    assert any(expected), "the reference generated nothing to compare"
    with SplitModel(server=bart_server.address, model="random:bart-tiny") as model:
        assert model.split == 2
        got = model.generate(texts, max_new_tokens=8, num_beams=2)
        assert got == expected and all(isinstance(t, str) for t in got)
        assert model.generate(texts[1], max_new_tokens=8, num_beams=2) == expected[1]
        assert model.generate([]) == []
        with pytest.raises(UsageError, match="BART.*generate"):
            model.encode("not an encoder")


def test_following_a_planner(reference):
    # (MiniLM: for a random tiny model the planner picks a clock cap that makes every request slow)
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", "3", "--min-interval-s", "0"],
                        "api-planner") as planner, \
            ServiceProcess(["server", "--split", "3", "--listen", "127.0.0.1:0", "--planner", planner.address],
                           "api-planned-server") as server, \
            SplitModel(server=server.address, planner=planner.address, timeout_s=60) as model:
        assert model.split == 3 and model.epoch >= 1 and f"planner={planner.address!r}" in repr(model)
        got = model.encode(SENTENCES, batch_size=2)
        about = model.last_plan
        assert about["plan_source"] == "planner" and about["plan_epoch"] >= 1 and about["k"] == 3
        assert about["rho_server"] is not None and about["plan_reason"]
        assert about["clock"] in ("cpufreq", "fixed")  # no --emulate-frequency: never emulated
    assert cosines(got, reference.encode(SENTENCES, normalize_embeddings=True)).min() >= 0.99999
