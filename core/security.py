"""Transport security for every coinfer gRPC service and client: TLS, mutual TLS, a shared token.

One `Security` per process, from the command line (`add_security_arguments`, or COINFER_TLS_CERT...):

* `--tls-cert/--tls-key`: this process's identity (a server's certificate; with mutual TLS, also
  what it presents as a client);
* `--tls-ca`: the CA that peers' certificates must chain to; given alone on a client, it turns TLS on;
* `--mtls`: servers require a client certificate from that CA, so every call (the planner's
  plan-changing calls included) comes from an authenticated client;
* `--tls-server-name`: the name to expect in the server's certificate when the address is not that
  name (e.g. the device reaches the server through the channel emulator's address);
* `--token`: a shared secret sent as `authorization: Bearer <token>` on every call and checked by
  every service (health checks excepted), for deployments without certificates.

Without any of these, services and clients are plaintext, and services bind 127.0.0.1 by default.
A service asked to listen beyond loopback with neither TLS nor a token refuses to start unless
`--insecure` says that is meant (a private test network).
"""
from __future__ import annotations

import argparse
import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from coinfer.errors import UsageError

AUTH_HEADER = "authorization"
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # liveness probes carry no credentials


@dataclass(frozen=True)
class Security:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    mtls: bool = False
    server_name: str | None = None
    token: str | None = None
    insecure: bool = False  # --insecure: serve beyond loopback with no TLS and no token

    @property
    def tls(self) -> bool:
        return bool(self.cert or self.ca)

    def _read(self, path: str | None, option: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None

    # --- servers -----------------------------------------------------------------------------
    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            if self.mtls:
                raise UsageError("--mtls needs --tls-cert, --tls-key and --tls-ca")
            return None
        if not (self.cert and self.key):
            raise UsageError("a TLS server needs both --tls-cert and --tls-key")
        if self.mtls and not self.ca:
            raise UsageError("--mtls needs --tls-ca: the CA client certificates must chain to")
        return grpc.ssl_server_credentials([(self._read(self.key, "--tls-key"), self._read(self.cert, "--tls-cert"))],
                                           root_certificates=self._read(self.ca, "--tls-ca"),
                                           require_client_auth=self.mtls)

    @property
    def authenticates(self) -> bool:
        """Whether callers are authenticated: a token, or mutual TLS."""
        return bool(self.token) or (self.tls and self.mtls)

    def check_exposure(self, address: str, option: str = "--listen") -> None:
        """Refuse to serve beyond loopback unauthenticated and in plain text, unless --insecure."""
        if self.insecure or self.tls or self.token or is_loopback(address):
            return
        raise UsageError(f"{option} {address}: reachable beyond loopback with neither TLS nor a token; "
                         "give --token (or COINFER_TOKEN) or --tls-cert/--tls-key, or --insecure if "
                         "that is meant")

    def bind(self, server, address: str) -> int:
        """Add a listening port (TLS when configured); the port bound, 0 on failure."""
        credentials = self.server_credentials()
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [_TokenCheck(self.token)] if self.token else []

    def token_ok(self, authorization: str | None) -> bool:
        """An HTTP Authorization header against the token (no token configured: always)."""
        if not self.token:
            return True
        return hmac.compare_digest((authorization or "").encode(), f"Bearer {self.token}".encode())

    # --- clients -----------------------------------------------------------------------------
    def channel(self, target: str, options: list | None = None) -> grpc.Channel:
        options = list(options or [])
        if self.tls:
            if self.server_name:
                options.append(("grpc.ssl_target_name_override", self.server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._read(self.ca, "--tls-ca"),
                private_key=self._read(self.key, "--tls-key") if self.cert else None,
                certificate_chain=self._read(self.cert, "--tls-cert") if self.cert else None)
            channel = grpc.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _TokenHeader(self.token))
        return channel


_process_security = Security()


def configure(security: Security) -> None:
    """Set this process's security (the command line does, once)."""
    global _process_security
    _process_security = security


def current() -> Security:
    return _process_security


def channel(target: str, options: list | None = None, security: Security | None = None) -> grpc.Channel:
    """A client channel to `target` with this process's security (or the one given)."""
    return (security or _process_security).channel(target, options)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (all gRPC services and clients of this process)")
    group.add_argument("--tls-cert", metavar="PEM", help="this process's certificate (turns TLS on)")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-ca", metavar="PEM", help="CA certificate peers must chain to (turns TLS on)")
    group.add_argument("--mtls", action="store_true",
                       help="services require client certificates from --tls-ca (mutual TLS)")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="name expected in servers' certificates when it differs from the address")
    group.add_argument("--token", metavar="SECRET",
                       help="shared token sent and required on every call (prefer COINFER_TOKEN: a "
                            "flag shows in the process list)")
    group.add_argument("--insecure", action="store_true",
                       help="allow serving beyond loopback with neither TLS nor a token (a private "
                            "test network); without it such a service refuses to start")


def from_args(args: argparse.Namespace) -> Security:
    return Security(cert=getattr(args, "tls_cert", None), key=getattr(args, "tls_key", None),
                    ca=getattr(args, "tls_ca", None), mtls=bool(getattr(args, "mtls", False)),
                    server_name=getattr(args, "tls_server_name", None), token=getattr(args, "token", None) or None,
                    insecure=bool(getattr(args, "insecure", False)))


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost (or an empty host: every interface)


class _TokenHeader(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._header = (AUTH_HEADER, f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


class _TokenCheck(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        offered = dict(details.invocation_metadata or ()).get(AUTH_HEADER, "")
        if hmac.compare_digest(offered.encode(), self._expected):
            return handler
        return _refusal(handler)


def _refusal(handler):
    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong token")

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
