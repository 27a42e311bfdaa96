"""Prometheus metrics of the server: what an operator graphs and alerts on.

Each server process has its own registry, served over HTTP by `--metrics-listen HOST:PORT` at
/metrics: requests by outcome (gRPC status), server-side latency (queue + compute), batch sizes,
requests computed and answered from the reply cache, and the plan epoch in force. When the process
has a token (--token / COINFER_TOKEN), /metrics asks for it too (`Authorization: Bearer <token>`, which
Prometheus sends with `authorization: {credentials: ...}`), and answers 401 without it.
"""
from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from coinfer import security

from coinfer.rpc import split_address

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("coinfer_server_requests", "requests answered, by gRPC status code", ["code"],
                                registry=self.registry)
        self.latency = Histogram("coinfer_server_latency_seconds", "queue + compute of answered requests",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("coinfer_server_batch_requests", "requests computed together",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=self.registry)
        self.cache_hits = Counter("coinfer_server_reply_cache_hits", "retries answered from the reply cache",
                                  registry=self.registry)
        self.epoch = Gauge("coinfer_server_plan_epoch", "plan epoch in force", registry=self.registry)

    def answered(self, timing) -> None:
        self.requests.labels(code="OK").inc()
        self.latency.observe(timing.queue_s + timing.compute_s)
        self.batch_size.observe(timing.batch_size)

    def refused(self, code_name: str) -> None:
        self.requests.labels(code=code_name).inc()

    def serve(self, address: str) -> None:
        """Serve /metrics on `address` from a daemon thread (prometheus_client's WSGI app)."""
        host, port = split_address(address)
        settings = security.current()
        settings.check_exposure(address, "--metrics-listen")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):
            if not settings.token_ok(environ.get("HTTP_AUTHORIZATION")):
                start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                    ("WWW-Authenticate", "Bearer")])
                return [b"authorization: missing or wrong token\n"]
            return metrics_app(environ, start_response)

        self._http = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=self._http.serve_forever, name="coinfer-metrics", daemon=True).start()

    def stop(self) -> None:
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per scrape on stderr is noise
        pass
