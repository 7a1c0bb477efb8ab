"""Limits, seen by grpcio: a call over a limit is refused with
RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` trailer, and a grpcio
channel whose retry policy covers RESOURCE_EXHAUSTED honours it (gRFC A6):
it waits the pushback before retrying, so its retry fits the rate.

The limit is on health Check, which every server serves, for every
identity, so nothing here names the service's API.
"""
import json
import pathlib
import sys
import tempfile
import time

import grpc
import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import policycases  # noqa: E402
import realserver  # noqa: E402

CHECK = "/grpc.health.v1.Health/Check"
# One call every 2 s, bursts of 1: a retry that ignored the pushback (and
# came after the policy's 10 ms backoff) would be refused again.
PER_SECOND = 0.5
LIMITS = {
    "limits": [{
        "name": "health-checks", "principal": "*", "method": CHECK,
        "rate": {"per_second": PER_SECOND, "burst": 1},
    }],
}
RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "grpc.health.v1.Health"}],
    "retryPolicy": {
        "maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
        "backoffMultiplier": 1, "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
    },
}]})


@pytest.fixture()
def server():
    """A server with LIMITS (one per test: each test starts with a full bucket)."""
    with tempfile.TemporaryDirectory() as tmp:
        limits = pathlib.Path(tmp) / "limits.json"
        limits.write_text(json.dumps(LIMITS))
        with realserver.running_server(extra_args=["--limits", str(limits)]) as running:
            yield running


def channel(address, certs: pathlib.Path, options=()) -> grpc.Channel:
    cert, key = policycases.any_identity(certs)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.secure_channel(address, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost"), *options])


def check(ch: grpc.Channel):
    """Health Check with an empty request (raw bytes: no generated code)."""
    return ch.unary_unary(CHECK)(b"", timeout=30)


def test_over_the_rate_a_call_is_refused_with_a_pushback(server):
    address, certs = server
    with channel(address, certs) as ch:
        check(ch)
        with pytest.raises(grpc.RpcError) as refused:
            check(ch)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    trailers = dict(refused.value.trailing_metadata())
    pushback = int(trailers["grpc-retry-pushback-ms"])
    assert 1 <= pushback <= 1000 / PER_SECOND, pushback
    assert "health-checks" in refused.value.details()


def test_a_grpcio_retry_policy_honours_the_pushback(server):
    address, certs = server
    options = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_CONFIG)]
    with channel(address, certs, options) as ch:
        check(ch)  # takes the burst
        started = time.monotonic()
        check(ch)  # refused, then retried after the pushback: it must succeed
        waited = time.monotonic() - started
    # A lower bound only (the retry came after the pushback, not within any
    # time): without it, grpcio would retry after 10 ms and be refused.
    assert waited >= 0.5 / PER_SECOND, waited
