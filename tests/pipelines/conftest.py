"""Session fixtures for pipeline tests: one local Ray and one real S3 endpoint (moto server) on loopback.

``ray_local``: ``ray.init(num_cpus=2)`` once per session (reused if a Ray is already up). Workers inherit a fake AWS
environment set just before Ray starts, so no test task can ever see real credentials.
``s3_server``: moto's ``ThreadedMotoServer`` bound to 127.0.0.1 on a free port; yields the endpoint URL
(``http://127.0.0.1:PORT``) and sets ``AWS_ENDPOINT_URL`` plus fake credentials for the session.
"""

from __future__ import annotations

import logging

import pytest

FAKE_AWS = {
    # distinctive values, so tests can assert that no log, object, param or message ever carries them
    "AWS_ACCESS_KEY_ID": "FAKEKEYIDNEVERLOGGED",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-never-logged",
    "AWS_SESSION_TOKEN": "fake-token-never-logged",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
}


@pytest.fixture(scope="session")
def fake_aws_env():
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(k, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        yield dict(FAKE_AWS)


@pytest.fixture(scope="session")
def ray_local(fake_aws_env):
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        # address="local": always a fresh cluster of our own, even if RAY_ADDRESS is set or a killed head left
        # /tmp/ray/ray_current_cluster behind (then a plain init would try to join it and refuse num_cpus).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(fake_aws_env):
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1", f"moto must bind loopback only, got {host}"
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", url)
        yield url
    server.stop()
