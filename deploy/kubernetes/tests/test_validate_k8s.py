"""Self-test of the validator: the manifests as committed pass, and each
deliberately broken copy fails with the problem named.

Run by scripts/validate-k8s.sh, which sets KUBECTL, K8S_CRD_DIR and
K8S_SCHEMA_VERSION. Each case copies deploy/kubernetes/ to a temporary
directory, breaks one thing in the YAML or JSON source, renders it with the
same kubectl, and validates the result.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
KDIR = HERE.parent
sys.path.insert(0, str(KDIR / "tools"))

import validate_k8s  # noqa: E402

KUBECTL = os.environ.get("KUBECTL", "kubectl")
CRD_DIR = os.environ.get("K8S_CRD_DIR", str(KDIR.parents[2] / "shared" / "k8s-schemas" / "cert-manager"))
VERSION = os.environ.get("K8S_SCHEMA_VERSION", "1.35.0")


def render_and_validate(tmp_path, edits=()):
    """edits: (file, old, new) replacements, each of which must apply once."""
    work = tmp_path / "kubernetes"
    shutil.copytree(KDIR, work, ignore=shutil.ignore_patterns("tests", "tools", "__pycache__"))
    for name, old, new in edits:
        path = work / name
        text = path.read_text()
        assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times"
        path.write_text(text.replace(old, new))
    out = subprocess.run([KUBECTL, "kustomize", str(work)], capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return validate_k8s.validate(docs, CRD_DIR, VERSION)


def assert_fails(report, *needles):
    assert report.errors, "the broken manifests passed validation"
    text = "\n".join(report.errors)
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


def test_the_committed_manifests_pass(tmp_path):
    report = render_and_validate(tmp_path)
    assert report.errors == []
    # Every rendered resource went through a schema.
    assert len(report.schema_checked) >= 20


def test_a_misspelled_deployment_field_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", "  replicas: 3\n", "  replicas: 3\n  replica: 3\n")])
    assert_fails(report, "Deployment/inventory/inventory-server", "'replica' was unexpected", "strict")


def test_a_misspelled_nested_container_field_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true")])
    assert_fails(report, "readOnlyRootFileSystem", "readOnlyRootFilesystem missing")


def test_a_misspelled_certificate_field_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("cert-manager/certificates.yaml", "  secretName: inventory-writer-tls\n", "  secretName: inventory-writer-tls\n  renewBefor: 8h\n")],
    )
    assert_fails(report, "Certificate/inventory/inventory-writer", "'renewBefor' was unexpected", "cert-manager CRD schema")


def test_a_wrong_certificate_value_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("cert-manager/certificates.yaml", "  secretName: inventory-admin-tls\n", "  secretName: inventory-admin-tls\n  isCA: \"no\"\n")]
    )
    assert_fails(report, "Certificate/inventory/inventory-admin", "spec.isCA")


def test_a_certificate_whose_spiffe_id_is_not_in_the_policy_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [
            ("cert-manager/certificates.yaml", "sa/inventory-writer\n", "sa/inventory-scribe\n"),
            ("serviceaccounts.yaml", "name: inventory-writer\n", "name: inventory-scribe\n"),
        ],
    )
    # Both directions: the new ID is named by no rule, and the policy's
    # writer principal now matches no certificate.
    assert_fails(
        report,
        "spiffe://example.org/ns/inventory/sa/inventory-scribe is not named by any allow rule",
        "principal 'spiffe://example.org/ns/inventory/sa/inventory-writer' matches no client Certificate",
    )


def test_a_policy_principal_without_a_certificate_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("policy.json", 'inventory-admin"] },', 'inventory-admin", "spiffe://example.org/ns/other/*"] },')]
    )
    assert_fails(report, "principal 'spiffe://example.org/ns/other/*' matches no client Certificate")


def test_a_wildcard_principal_that_matches_a_certificate_passes(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("policy.json", 'inventory-admin"] },', 'inventory-admin", "spiffe://example.org/ns/inventory/sa/inventory-ad*"] },')],
    )
    assert report.errors == []


def test_a_spiffe_id_for_a_missing_service_account_fails(tmp_path):
    report = render_and_validate(tmp_path, [("serviceaccounts.yaml", "name: inventory-reader\n", "name: inventory-readers\n")])
    assert_fails(report, "there is no ServiceAccount inventory/inventory-reader")


def test_a_probe_identity_allowed_more_than_health_check_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("policy.json", '"request": { "paths": ["/grpc.health.v1.Health/Check"] }', '"request": { "paths": ["/grpc.health.v1.Health/*"] }')],
    )
    assert_fails(report, "lets the probe identity", "may call only /grpc.health.v1.Health/Check")


def test_a_grace_period_shorter_than_prestop_plus_drain_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", "terminationGracePeriodSeconds: 25", "terminationGracePeriodSeconds: 12")])
    assert_fails(report, "terminationGracePeriodSeconds 12 < preStop 5 s + drain 10 s")


def test_a_subpath_mount_of_the_certificates_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [
            ("deployment.yaml", "              mountPath: /etc/inventory/tls\n", "              mountPath: /etc/inventory/tls/tls.crt\n              subPath: tls.crt\n"),
        ],
    )
    assert_fails(report, "subPath")


def test_a_committed_secret_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("namespace.yaml", "    pod-security.kubernetes.io/enforce-version: latest\n",
          "    pod-security.kubernetes.io/enforce-version: latest\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: leaked\n  namespace: inventory\nstringData:\n  tls.key: x\n")],
    )
    assert_fails(report, "a Secret is part of the manifests")


def test_an_unknown_kind_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("namespace.yaml", "    pod-security.kubernetes.io/enforce-version: latest\n",
          "    pod-security.kubernetes.io/enforce-version: latest\n---\napiVersion: example.org/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: inventory\n")],
    )
    assert_fails(report, "no schema for example.org/v1 Widget")


def test_a_deployment_without_the_metrics_container_port_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("deployment.yaml", "            - name: metrics\n              containerPort: 9464\n              protocol: TCP\n", "")]
    )
    # The NetworkPolicy's named port no longer resolves either.
    assert_fails(report, "no containerPort 9464 named 'metrics'", "no ingress rule admits port 9464 from namespace 'monitoring'")


def test_metrics_on_loopback_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", "value: 0.0.0.0:9464", "value: 127.0.0.1:9464")])
    assert_fails(report, "SERVER_METRICS_LISTEN is '127.0.0.1:9464', a loopback address")


def test_metrics_listen_left_at_the_default_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("deployment.yaml", "            - name: SERVER_METRICS_LISTEN\n              value: 0.0.0.0:9464\n", "")]
    )
    assert_fails(report, "env SERVER_METRICS_LISTEN missing: the server's default 127.0.0.1:9464 is loopback")


def test_metrics_off_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", "value: 0.0.0.0:9464", "value: \"off\"")])
    assert_fails(report, "env SERVER_METRICS_LISTEN is 'off', expected a non-loopback address")


def test_metrics_admitted_from_every_namespace_fails(tmp_path):
    report = render_and_validate(
        tmp_path,
        [("networkpolicy.yaml", "        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring\n",
          "        - namespaceSelector: {}\n")],
    )
    assert_fails(report, "admits port 9464 from {'namespaceSelector': {}}", "no ingress rule admits port 9464 from namespace 'monitoring'")


def test_metrics_admitted_by_the_grpc_rule_too_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("networkpolicy.yaml", "        - port: grpc\n", "        - port: grpc\n          protocol: TCP\n        - port: 9464\n")]
    )
    assert_fails(report, "ingress rule 0 admits port 9464 from", "inventory-client")


def test_a_wrong_scrape_annotation_fails(tmp_path):
    report = render_and_validate(tmp_path, [("deployment.yaml", 'prometheus.io/port: "9464"', 'prometheus.io/port: "50051"')])
    assert_fails(report, "pod annotation prometheus.io/port is '50051', expected '9464'")


@pytest.mark.parametrize("pattern,value,expected", [
    ("*", "x", True), ("*", "", False), ("spiffe://a/*", "spiffe://a/b", True),
    ("*/b", "spiffe://a/b", True), ("spiffe://a/b", "spiffe://a/B", False), ("a*b", "a*b", True), ("a*b", "axb", False),
])
def test_a43_matching(pattern, value, expected):
    assert validate_k8s.a43_matches(pattern, value) is expected
