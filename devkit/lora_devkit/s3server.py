"""A real S3 endpoint for tests and the local demo: moto's threaded server on 127.0.0.1, or a real
MinIO when env S3_ENDPOINT is set (with S3_ACCESS_KEY / S3_SECRET_KEY)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from lora_contract.storage import S3Store

from .service import Service

DEFAULT_KEY = "testing"  # moto accepts any credentials


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"S3 test server did not listen on {host}:{port} within {timeout_s:.0f}s")


class S3Server(Service):
    """`with S3Server() as s3: s3.store().put_json(...)`; `.endpoint` is an http URL.

    `env()` gives the variables a trainer process needs to reach this server.
    """

    def __init__(self, use_env: bool = True) -> None:
        external = os.environ.get("S3_ENDPOINT") if use_env else None
        self.external = bool(external)
        self._server: Any = None
        if external:
            self.endpoint = external
            self.access_key = os.environ.get("S3_ACCESS_KEY", "minioadmin")
            self.secret_key = os.environ.get("S3_SECRET_KEY", "minioadmin")
        else:
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            self.access_key = DEFAULT_KEY
            self.secret_key = DEFAULT_KEY

    def start(self) -> S3Server:
        if self.external or self._server is not None:
            return self
        # moto reads these at import time for its default region/account.
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def store(self, retries: int = 4) -> S3Store:
        return S3Store(self.endpoint, self.access_key, self.secret_key, retries=retries)

    def ensure_bucket(self, name: str) -> None:
        self.store().ensure_bucket(name)

    def env(self) -> dict[str, str]:
        """Environment for a child process (trainer) to use this endpoint."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
