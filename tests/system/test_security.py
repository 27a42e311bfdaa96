"""TLS, mutual TLS and the shared token on real services over 127.0.0.1.

Certificates are made here with the openssl command line (a throwaway CA, a server and a client)."""
import os
import shutil
import subprocess
import sys
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinfer.codecs import encode
from coinfer.lab.launch import ServiceProcess
from coinfer.protos import coinfer_pb2 as pb
from coinfer.protos import coinfer_pb2_grpc as pb_grpc
from coinfer.protos import planner_pb2 as ppb
from coinfer.protos import planner_pb2_grpc as ppb_grpc
from coinfer.security import Security

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test certificates")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder, name, ca, sans):
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={sans}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "1", "-subj", f"/CN=coinfer test {ca}", cwd=folder)
    _issue(folder, "server", "ca", "DNS:localhost,DNS:coinfer-server,IP:127.0.0.1")
    _issue(folder, "client", "ca", "DNS:device")
    _issue(folder, "stranger", "other-ca", "DNS:device")
    return {name: str(folder / name) for name in
            ("ca.pem", "other-ca.pem", "server.pem", "server.key", "client.pem", "client.key", "stranger.pem",
             "stranger.key")}


def _request(minilm, epoch=0):
    return pb.InferRequest(request_id="r", split_point=2, model_id=minilm.name, plan_epoch=epoch,
                           hidden_states=encode(torch.randn(1, 4, minilm.hidden_size)),
                           attention_mask=encode(torch.ones(1, 4, dtype=torch.long)))


def _call(address, security, minilm):
    with security.channel(address) as channel:
        stub = pb_grpc.CoInferenceStub(channel)
        epoch = stub.Info(pb.InfoRequest(), timeout=20).plan_epoch
        return stub.Infer(_request(minilm, epoch), timeout=20)


def test_tls_server_refuses_clients_without_the_ca(certs, minilm):
    args = ["server", "--split", "2", "--listen", "127.0.0.1:0", "--tls-cert", certs["server.pem"],
            "--tls-key", certs["server.key"]]
    with ServiceProcess(args, "tls-server") as server:
        reply = _call(server.address, Security(ca=certs["ca.pem"]), minilm)
        assert list(reply.output.shape) == [1, minilm.hidden_size]
        for wrong in (Security(), Security(ca=certs["other-ca.pem"])):  # plaintext; a CA that did not sign it
            with pytest.raises(grpc.RpcError) as caught:
                _call(server.address, wrong, minilm)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_and_guards_plan_changes(certs, minilm):
    tls = ["--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"], "--tls-ca", certs["ca.pem"], "--mtls"]
    with ServiceProcess(["planner", "--listen", "127.0.0.1:0", "--split", "2", *tls], "mtls-planner") as planner:
        client = Security(ca=certs["ca.pem"], cert=certs["client.pem"], key=certs["client.key"])
        for refused in (Security(ca=certs["ca.pem"]),  # no client certificate
                        Security(ca=certs["ca.pem"], cert=certs["stranger.pem"], key=certs["stranger.key"])):
            with refused.channel(planner.address) as channel:
                with pytest.raises(grpc.RpcError):
                    ppb_grpc.PlannerStub(channel).Replan(ppb.ReplanRequest(why="not allowed"), timeout=20)
        with client.channel(planner.address) as channel:
            stub = ppb_grpc.PlannerStub(channel)
            epoch = stub.GetState(ppb.StateRequest(), timeout=20).plan.epoch
            assert stub.Replan(ppb.ReplanRequest(why="allowed"), timeout=20).epoch == epoch + 1
        # a server following that planner over mTLS, and a device reaching it through its address
        with ServiceProcess(["server", "--split", "2", "--listen", "127.0.0.1:0", "--planner", planner.address,
                             *tls], "mtls-server") as server:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the server took the planner's plan over mTLS
                with client.channel(server.address) as channel:
                    if pb_grpc.CoInferenceStub(channel).Info(pb.InfoRequest(), timeout=20).plan_epoch > epoch:
                        break
                time.sleep(0.1)
            reply = _call(server.address, client, minilm)
            assert reply.plan_epoch > epoch
            with pytest.raises(grpc.RpcError):
                _call(server.address, Security(ca=certs["ca.pem"]), minilm)


def test_device_reaches_a_tls_server_through_the_channel_emulator(certs, minilm, sentences):
    tls_server = ["--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"]]
    with ServiceProcess(["server", "--split", "2", "--listen", "127.0.0.1:0", *tls_server], "server") as server, \
            ServiceProcess(["channel", "--listen", "127.0.0.1:0", "--upstream", server.address, "--unlimited"],
                           "channel") as channel:
        out = subprocess.run([sys.executable, "-m", "coinfer", "device", "--server", channel.address, "--split", "2",
                              "--tls-ca", certs["ca.pem"], "--tls-server-name", "coinfer-server", "--json",
                              *sentences], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == len(sentences)



def test_http_device_serves_https_to_the_openai_client(certs, minilm, sentences):
    """--tls-cert/--tls-key on `coinfer device --http`: HTTPS for applications, TLS to the server; a
    client that does not trust the CA, or speaks plain HTTP, gets no answer."""
    import http.client
    import urllib.error
    import urllib.request

    import ssl

    import openai

    tls = ["--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"], "--tls-ca", certs["ca.pem"]]
    with ServiceProcess(["server", "--split", "2", "--listen", "127.0.0.1:0", *tls], "tls-server") as server, \
            ServiceProcess(["device", "--server", server.address, "--http", "127.0.0.1:0", *tls],
                           "https-device") as device:
        trusted = openai.OpenAI(base_url=f"https://{device.address}/v1", api_key="unused", max_retries=0, timeout=60,
                                http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=certs["ca.pem"])))
        answer = trusted.embeddings.create(model=minilm.name, input=sentences[:3], encoding_format="float")
        assert len(answer.data) == 3 and len(answer.data[0].embedding) == minilm.hidden_size
        assert abs(sum(x * x for x in answer.data[0].embedding) - 1.0) < 1e-4   # normalised, as served
        untrusting = openai.OpenAI(base_url=f"https://{device.address}/v1", api_key="unused", max_retries=0,
                                   timeout=20)
        with pytest.raises(openai.APIConnectionError):
            untrusting.embeddings.create(model=minilm.name, input=sentences[:1])
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"http://{device.address}/health", timeout=20)

def test_token_is_required_on_every_call_but_health(minilm):
    env = {**os.environ, "COINFER_TOKEN": "s3cret"}
    with ServiceProcess(["server", "--split", "2", "--listen", "127.0.0.1:0"], "token-server",
                        env=env) as server:
        with pytest.raises(grpc.RpcError) as caught:
            _call(server.address, Security(), minilm)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            _call(server.address, Security(token="guess"), minilm)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert list(_call(server.address, Security(token="s3cret"), minilm).output.shape) == [1, minilm.hidden_size]
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_inconsistent_tls_options_are_usage_errors(certs):
    out = subprocess.run([sys.executable, "-m", "coinfer", "server", "--listen", "127.0.0.1:0", "--mtls"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--mtls" in out.stderr
    out = subprocess.run([sys.executable, "-m", "coinfer", "server", "--listen", "127.0.0.1:0", "--tls-cert",
                          certs["server.pem"]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--tls-key" in out.stderr
