"""`coinfer device --http`: the real `openai` client against the device half in front of a real server."""
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from coinfer.lab.launch import ServiceProcess
from embeddings import SENTENCES, cosines

MINILM = "all-MiniLM-L6-v2"
MINILM_BLOCKS = 6
TOKEN = "http-test-token"
def _device(server: ServiceProcess, model: str, token: str | None = None) -> ServiceProcess:
    env = dict(os.environ)
    env.pop("COINFER_TOKEN", None)
    if token:
        env["COINFER_TOKEN"] = token
    return ServiceProcess(["device", "--server", server.address, "--model", model, "--http", "127.0.0.1:0"],
                          "http-device", env=env)


@pytest.fixture(scope="module")
def services(split_servers):
    """An HTTP device in front of each shared server (MiniLM at k = 0, 2, L and BART: tests/conftest.py),
    and a token-protected one in front of the k = 2 server. Started side by side."""
    models = {0: "minilm", 2: "minilm", MINILM_BLOCKS: "minilm", "bart": "random:bart-tiny"}
    started = split_servers
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(models) + 1) as pool:
        devices = {key: pool.submit(_device, started[key], model) for key, model in models.items()}
        devices["token"] = pool.submit(_device, started[2], "minilm", TOKEN)
        http = {}
        for key, future in devices.items():
            if future.exception() is None:
                http[key] = stack.enter_context(future.result())
        for future in devices.values():
            future.result()
        yield {"servers": started, "http": http}


def _client(service: ServiceProcess, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{service.address}/v1", api_key=api_key, timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def reference(minilm_sentence_transformer):
    return minilm_sentence_transformer


def _vectors(response) -> np.ndarray:
    """The rows; asked for base64 explicitly, the openai client hands the strings back undecoded."""
    import base64

    return np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str)
                     else d.embedding for d in response.data], dtype=np.float32)


def _get(service: ServiceProcess, path: str, token: str | None = None):
    request = urllib.request.Request(f"http://{service.address}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("k", [0, 2, MINILM_BLOCKS])
def test_embeddings_equal_sentence_transformers(services, reference, k):
    client = _client(services["http"][k])
    want = reference.encode(SENTENCES, normalize_embeddings=True)
    for model in (MINILM, "minilm"):
        response = client.embeddings.create(model=model, input=SENTENCES, encoding_format="float")
        got = _vectors(response)
        assert got.shape == want.shape
        assert cosines(got, want).min() >= 0.99999
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert [d.index for d in response.data] == list(range(len(SENTENCES)))
        assert response.model == MINILM
    tokens = sum(len(ids) for ids in reference.tokenizer(SENTENCES)["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_float_and_base64_agree_and_single_string(services, reference):
    client = _client(services["http"][2])
    floats = _vectors(client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="float"))
    explicit = client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="base64")
    assert isinstance(explicit.data[0].embedding, str)
    b64 = _vectors(explicit)
    default = _vectors(client.embeddings.create(model=MINILM, input=SENTENCES))  # the client asks for base64
    assert np.array_equal(floats, b64) and np.array_equal(floats, default)
    one = client.embeddings.create(model=MINILM, input=SENTENCES[1])
    assert len(one.data) == 1
    assert cosines(_vectors(one), floats[1:2]).min() >= 0.99999
    raw = urllib.request.Request(f"http://{services['http'][2].address}/v1/embeddings", method="POST",
                                 data=json.dumps({"model": MINILM, "input": SENTENCES[:2],
                                                  "encoding_format": "base64"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(raw, timeout=60) as response:
        body = json.load(response)
        epoch_header = response.headers["X-Coinfer-Plan-Epoch"]
    import base64

    # every answer says what produced it: the static plan of the k = 2 server, nothing pruned
    about = body["coinfer"]
    assert epoch_header == "0" and about["plan_epoch"] == 0 and about["k"] == 2
    assert (about["rho_device"], about["rho_server"], about["codec"]) == (1.0, 1.0, "fp32")
    assert about["predicted_quality"] == 1.0 and about["plan_source"] == "static"
    assert about["clock"] in ("cpufreq", "nvml", "emulated", "fixed") and about["prune_method"] == "magnitude"
    assert explicit.model_extra["coinfer"]["k"] == 2  # the openai client keeps the field, unknown to it

    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats[0], atol=1e-5)  # another batch, other padding: not bit-equal


def test_token_arrays(services, reference):
    client = _client(services["http"][2])
    ids = reference.tokenizer(SENTENCES)["input_ids"]
    want = reference.encode(SENTENCES, normalize_embeddings=True)
    many = client.embeddings.create(model=MINILM, input=ids, encoding_format="float")
    assert cosines(_vectors(many), want).min() >= 0.99999
    assert many.usage.prompt_tokens == sum(len(r) for r in ids)
    one = client.embeddings.create(model=MINILM, input=ids[2], encoding_format="float")
    assert cosines(_vectors(one), want[2:3]).min() >= 0.99999


def test_error_objects(services):
    http = services["http"][2]
    client = _client(http)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input=SENTENCES)
    assert caught.value.body["param"] == "model" and caught.value.body["code"] == "model_not_found"
    assert "text-embedding-3-small" in caught.value.body["message"]
    for bad in ([], "", ["fine", ""], [1, "x"], [[1, 2], []], 3.5, [{"a": 1}]):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=MINILM, input=bad)
        assert caught.value.status_code == 400
        assert caught.value.body["param"] == "input", bad
        assert caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MINILM, input=SENTENCES, dimensions=128)
    assert caught.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as caught:  # not a generator
        client.completions.create(model=MINILM, prompt="hello")
    assert caught.value.body["param"] == "model"
    # FastAPI's and starlette's own errors are error objects too
    request = urllib.request.Request(f"http://{http.address}/v1/embeddings", data=b"{not json", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400 and "error" in json.loads(caught.value.read())
    status, body = _get(http, "/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    too_many = urllib.request.Request(f"http://{http.address}/v1/embeddings", method="POST",
                                      data=json.dumps({"model": MINILM, "input": ["x"] * 100_001}).encode(),
                                      headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(too_many, timeout=60)
    assert caught.value.code == 413 and json.loads(caught.value.read())["error"]["param"] == "input"


def test_ten_thousand_sentences_answered_in_order(services, reference):
    client = _client(services["http"][2])
    sentences = [f"sentence {i}" for i in range(10_000)]
    response = client.embeddings.create(model=MINILM, input=sentences)
    got = _vectors(response)
    assert got.shape == (10_000, 384)
    assert [d.index for d in response.data] == list(range(10_000))
    sample = [0, 1, 17, 999, 4321, 7777, 9998, 9999]
    want = reference.encode([sentences[i] for i in sample], normalize_embeddings=True)
    assert cosines(got[sample], want).min() >= 0.99999


def test_models_health_metrics(services):
    http = services["http"][2]
    models = _client(http).models.list()
    assert [m.id for m in models.data] == [MINILM]
    status, body = _get(http, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = _get(http, "/metrics")
    assert status == 200 and "coinfer_http_requests_total" in body and "coinfer_http_request_seconds" in body


def test_completions_bart(services):
    client = _client(services["http"]["bart"])
    response = client.completions.create(model="random:bart-tiny", prompt=["a b c", "d e"], max_tokens=4)
    assert [c.index for c in response.choices] == [0, 1]
    assert all(isinstance(c.text, str) for c in response.choices)
    assert response.usage.prompt_tokens > 0
    about = response.model_extra["coinfer"]
    assert about["plan_epoch"] == 0 and about["k"] == 2 and about["codec"] == "fp32"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="random:bart-tiny", input="x")
    assert caught.value.body["param"] == "model"


def test_token_protected(services, reference):
    http = services["http"]["token"]
    with pytest.raises(openai.AuthenticationError):
        _client(http).embeddings.create(model=MINILM, input=SENTENCES)
    with pytest.raises(openai.AuthenticationError):
        _client(http, "wrong").models.list()
    response = _client(http, TOKEN).embeddings.create(model=MINILM, input=SENTENCES)
    want = reference.encode(SENTENCES, normalize_embeddings=True)
    assert cosines(_vectors(response), want).min() >= 0.99999
    assert _get(http, "/health")[0] == 200  # no token needed
    assert _get(http, "/metrics")[0] == 401
    assert _get(http, "/metrics", TOKEN)[0] == 200


def test_exposure_refused_and_sigterm_exits_zero(services):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COINFER_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "coinfer", "device", "--server", services["servers"][2].address,
                              "--http", "0.0.0.0:0"], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "--http" in refused.stderr
    assert services["http"]["token"].stop() == 0


def test_a_server_that_goes_away_is_503_and_the_device_keeps_serving():
    """The HTTP device outlives its server: requests get 503 with an OpenAI error object (nothing hangs,
    nothing crashes) and /health says unavailable; a server back on the same port is used again."""
    from coinfer.lab.launch import free_port

    port = free_port()
    args = ["server", "--model", "random:bert-tiny", "--split", "1", "--listen", f"127.0.0.1:{port}"]
    server = ServiceProcess(args, "http-503-server")
    env = {k: v for k, v in os.environ.items() if k != "COINFER_TOKEN"}
    with server, ServiceProcess(["device", "--server", server.address, "--model", "random:bert-tiny", "--http",
                         "127.0.0.1:0", "--timeout-s", "5"], "http-503-device", env=env) as device:
        client = _client(device)
        assert len(client.embeddings.create(model="random:bert-tiny", input=["up"]).data) == 1
        assert server.stop() == 0
        with pytest.raises(openai.APIStatusError) as info:
            client.embeddings.create(model="random:bert-tiny", input=["down"])
        assert info.value.status_code == 503
        assert info.value.body["code"] == "server_unavailable" and "unreachable" in info.value.body["message"]
        status, _ = _get(device, "/health")
        assert status == 503
        with ServiceProcess(args, "http-503-server-again"):
            deadline = time.monotonic() + 60
            while _get(device, "/health")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(client.embeddings.create(model="random:bert-tiny", input=["back"]).data) == 1
