"""Starts the real Rust server for a Python test, as a user runs it.

The binaries come from MTLS_BIN_DIR (default: the workspace's target/debug);
the development PKI is made for the test by the `certs` binary. The server
binds 127.0.0.1:0 and logs the bound address before it serves, so tests read
the address from its log instead of sleeping.
"""
import contextlib
import json
import os
import pathlib
import subprocess
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
BIN = pathlib.Path(os.environ.get("MTLS_BIN_DIR", ROOT / "target" / "debug"))


def make_pki(directory: pathlib.Path) -> pathlib.Path:
    """A development PKI (CA, server, the service's client identities) in `directory`."""
    subprocess.run([BIN / "certs", "--dir", str(directory), "init"], check=True, capture_output=True)
    return directory


@contextlib.contextmanager
def running_server(policy: pathlib.Path = ROOT / "config" / "policy.json", extra_args=()):
    """Yields (address, certs directory) of a server running `policy`, with
    `extra_args` added to its command line."""
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_pki(pathlib.Path(tmp) / "certs")
        proc = subprocess.Popen(
            [
                BIN / "server",
                "--listen", "127.0.0.1:0",
                # No fixed port: tests may run servers side by side.
                "--metrics-listen", "127.0.0.1:0",
                "--cert", certs / "server.pem",
                "--key", certs / "server.key",
                "--client-ca", certs / "ca.pem",
                "--policy", policy,
                "--log-format", "json",
                *extra_args,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
        )
        address = None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "listening (mutual TLS)":
                address = event["addr"]
                break
        if address is None:
            proc.wait()
            raise RuntimeError("server did not start:\n" + "".join(seen))
        # Keep reading its log so that the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        try:
            yield address, certs
        finally:
            proc.terminate()
            proc.wait(timeout=30)
