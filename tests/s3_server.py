"""A real S3 API on 127.0.0.1 for the remote-store tests: moto's S3 server in a thread.

The server is single-threaded on purpose. AWS applies a conditional PUT (``If-None-Match``,
``If-Match``) atomically; moto checks the condition and then writes, which is atomic only when
requests do not overlap. Serving one request at a time gives the tests AWS's semantics (and HTTP/1.0
without keep-alive, so an idle client connection cannot block the others).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Credentials moto accepts; no real account, config file or instance metadata is ever consulted."""


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        """One line per request would drown the test output."""


@contextmanager
def s3_server() -> Iterator[str]:
    """Run the server; yield its endpoint URL."""
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket with a fresh name; return the name."""
    import s3fs

    name = f"latents-{secrets.token_hex(6)}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(name)
    return name
