"""Secrets stay out of plain text (issue 14, item 5).

Before: the stage cache's deny-list of credential-like storage options missed nested keys, a
user:password in ``endpoint_url`` and secrets in lists, and whatever it let through was saved in
plain view in the cache's filesystem block and in the index directory's ``store.json``; an audio
URL's user:password or signed query was stored in the latent record, logged and used as a task run
name. Now both blocks keep storage options as Prefect's ``SecretDict`` and every URL is scrubbed
(``prefect_acestep.stages.redact``) before it is recorded, logged or named. Checked against a real
Prefect server, a real S3 API and a real HTTP server on 127.0.0.1, by searching everything they and
the worker's files hold for the secret strings.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, get_client

from prefect_acestep.stages.errors import InvalidStageRequest
from prefect_acestep.stages.params import StageParams
from prefect_acestep.stages.store import LatentStore
from prefect_acestep.tasks.blocks import AceLatentStore
from prefect_acestep.tasks.stage_tasks import stage_task_for
from prefect_acestep.tasks.store_tasks import import_audio_task
from tests.flow_helpers import flow_run_id, register_counting, task_runs
from tests.s3_server import DUMMY_AWS_ENV, new_bucket, s3_server
from tests.test_audio_hostile import GOOD

BACKEND = "counting-secrets"
SECRETS = ("AKIA-SECRET-KEY-ID", "SECRET-ACCESS-VALUE", "SESSION-TOKEN-VALUE", "SSE-CUSTOMER-KEY-VALUE", "hunter2")

pytestmark = pytest.mark.usefixtures("fast_prefect")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in DUMMY_AWS_ENV.items():
            patch.setenv(name, value)
        with s3_server() as url:
            yield url


def secret_options(endpoint: str) -> dict[str, Any]:
    """Credentials where the old deny-list looked (``key``, ``secret``) and where it did not: nested
    under ``client_kwargs``, and in a list under ``config_kwargs`` (botocore reads neither list
    entry as a credential, but a person could put one there)."""
    return {
        "endpoint_url": endpoint,
        "key": "AKIA-SECRET-KEY-ID",
        "secret": "SECRET-ACCESS-VALUE",
        "client_kwargs": {"aws_session_token": "SESSION-TOKEN-VALUE"},
        "config_kwargs": {"user_agent_extra": "notes SSE-CUSTOMER-KEY-VALUE"},
    }


@flow
def one_stage(block_name: str) -> str:
    block = AceLatentStore.load(block_name)
    params = StageParams(caption="secret keeping", backend=BACKEND, seed=3, duration=2.0, inference_steps=4)
    return stage_task_for(params, block)(params, block, return_state=True).name


def everything_on_the_server() -> str:
    """Every block document as the API shows it to a reader without secrets, plus every flow and
    task run's name and parameters."""
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents(include_secrets=False)
        runs = client.read_flow_runs()
        task_runs_ = client.read_task_runs()
    parts = [json.dumps(doc.data, default=str) for doc in documents]
    parts += [run.name + json.dumps(run.parameters, default=str) for run in runs]
    parts += [run.name for run in task_runs_]
    return "\n".join(parts)


def test_storage_option_credentials_never_reach_plain_text(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACE_INDEX_DIR", str(tmp_path / "index"))
    register_counting(BACKEND)
    bucket = new_bucket(endpoint)
    AceLatentStore(root=f"s3://{bucket}/store", storage_options=secret_options(endpoint)).save("secret-store")
    assert one_stage("secret-store") == "Completed"
    assert one_stage("secret-store") == "Cached"  # the cache's own block reads its results back

    seen = everything_on_the_server()
    assert "ace-cache-" not in seen or "********" in seen
    files = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "index").rglob("*") if p.is_file())
    assert "store.json" in {p.name for p in (tmp_path / "index").rglob("*")}
    for secret in SECRETS:
        assert secret not in seen, secret
        assert secret not in files, secret
    # The secrets are there for whoever loads the block with them: the worker.
    loaded = AceLatentStore.load("secret-store").storage_options.get_secret_value()
    assert loaded["client_kwargs"]["aws_session_token"] == "SESSION-TOKEN-VALUE"


def test_an_endpoint_password_is_kept_out_of_the_index_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ACE_INDEX_DIR", str(tmp_path / "index"))
    store = LatentStore("memory://with-endpoint", storage_options={"endpoint_url": "http://u:hunter2@minio.lan:9000"})
    store.close()
    from prefect_acestep.stages.store.remote import host_cache_dir

    folder = host_cache_dir("s3://bucket/x", {"endpoint_url": "http://u:hunter2@minio.lan:9000"}, None)
    text = (folder / "store.json").read_text()
    assert "hunter2" not in text and "minio.lan:9000" in text


def test_a_root_url_carrying_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidStageRequest, match="carries credentials") as caught:
        LatentStore("s3://AKIA-SECRET-KEY-ID:hunter2@bucket/store")
    assert "hunter2" not in str(caught.value) and "AKIA-SECRET-KEY-ID" not in str(caught.value)


# --- audio URLs ----------------------------------------------------------------------------------


@pytest.fixture
def audio_server() -> Iterator[int]:
    """Serves ``GOOD`` to a request with the right Basic auth, 401 otherwise."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                if b"bXVzaWNpYW46aHVudGVyMg==" in head:  # musician:hunter2
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(GOOD) + GOOD)
                else:
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_an_audio_url_is_scrubbed_from_the_run_name_the_record_and_the_logs(
    audio_server: int, latent_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACE_AUDIO_ALLOWED_NETWORKS", "127.0.0.0/8")
    register_counting(BACKEND)
    url = f"http://musician:hunter2@127.0.0.1:{audio_server}/take.wav?X-Amz-Signature=SSE-CUSTOMER-KEY-VALUE"

    @flow
    def importing() -> str:
        return import_audio_task(url, AceLatentStore.from_env(), backend=BACKEND)

    state = importing(return_state=True)
    latent_id = state.result()
    [run] = task_runs(flow_run_id(state))
    assert run.name == f"import http://***@127.0.0.1:{audio_server}/take.wav?X-Amz-Signature=***"
    record = AceLatentStore.from_env().get_store().record(latent_id)
    assert record.params["source"] == run.name.removeprefix("import ")
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=None)
    text = everything_on_the_server() + "\n".join(log.message for log in logs) + record.model_dump_json()
    for secret in SECRETS:
        assert secret not in text, secret
