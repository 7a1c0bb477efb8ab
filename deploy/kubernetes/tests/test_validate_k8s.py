"""Self-test of the validator: the manifests as committed pass, and each
deliberately broken copy fails with the problem named.

Run by scripts/validate-k8s.sh, which sets KUBECTL, K8S_CRD_DIR and
K8S_SCHEMA_VERSION. Each case copies deploy/kubernetes/ to a temporary
directory, together with every base it loads from outside itself (config/,
whose kustomization makes the policy ConfigMap from config/policy.json), at
the same places relative to each other, breaks one thing in the YAML or
JSON source, renders it with the same kubectl, and validates the result.

The cases that change the policy do it on the parsed JSON (adding or
dropping whole rules), never by matching its text: config/policy.json is the
file a team rewrites on day one, and these tests must not need an edit then.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
KDIR = HERE.parent
REPO = KDIR.parents[1]
sys.path.insert(0, str(KDIR / "tools"))

import validate_k8s  # noqa: E402

KUBECTL = os.environ.get("KUBECTL", "kubectl")
CRD_DIR = os.environ.get("K8S_CRD_DIR", str(REPO.parent / "shared" / "k8s-schemas" / "cert-manager"))
VERSION = os.environ.get("K8S_SCHEMA_VERSION", "1.35.0")
# The deployed policy, relative to deploy/kubernetes (edits name files so).
POLICY = os.path.relpath(REPO / "config" / "policy.json", KDIR)
PROBE_ID = "spiffe://example.org/probe"


def _outside_bases(kdir: Path) -> list[Path]:
    """The directories outside kdir that its kustomization loads."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text()) or {}
    found = []
    for entry in (k.get("bases") or []) + (k.get("resources") or []):
        path = (kdir / entry).resolve()
        if path.is_dir() and KDIR not in (path, *path.parents):
            assert REPO in path.parents, f"{entry}: a base outside the repository"
            found.append(path)
    return found


def copy_tree(tmp_path) -> Path:
    """deploy/kubernetes and its outside bases, at their places in the
    repository, under tmp_path. Symlinks stay symlinks (kustomize treats a
    symlink to a file outside its root as outside its root)."""
    work = tmp_path / "repo"
    ignore = shutil.ignore_patterns("tests", "tools", "__pycache__")
    shutil.copytree(KDIR, work / KDIR.relative_to(REPO), symlinks=True, ignore=ignore)
    for base in _outside_bases(KDIR):
        shutil.copytree(base, work / base.relative_to(REPO), symlinks=True, ignore=ignore)
    return work / KDIR.relative_to(REPO)


def render(tmp_path, edits=()):
    """edits: (file, old, new) replacements, each of which must apply once,
    or (file, function) to rewrite the file's text. Files are relative to
    deploy/kubernetes. Returns the rendered documents."""
    work = copy_tree(tmp_path)
    for name, *change in edits:
        path = work / name
        text = path.read_text()
        if len(change) == 1:
            path.write_text(change[0](text))
            continue
        old, new = change
        assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times"
        path.write_text(text.replace(old, new))
    out = subprocess.run([KUBECTL, "kustomize", str(work)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_and_validate(tmp_path, edits=()):
    return validate_k8s.validate(render(tmp_path, edits), CRD_DIR, VERSION)


def policy_edit(change):
    """An edit of the deployed policy: change(policy) mutates the parsed JSON."""
    def rewrite(text):
        policy = json.loads(text)
        change(policy)
        return json.dumps(policy, indent=2) + "\n"
    return (POLICY, rewrite)


def add_rule(kind, rule):
    return policy_edit(lambda policy: policy.setdefault(kind, []).append(rule))


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


def test_the_deployed_policy_is_config_policy_json(tmp_path):
    report = validate_k8s.validate(render(tmp_path), CRD_DIR, VERSION, str(REPO / "config" / "policy.json"))
    assert report.errors == []


def test_a_deployed_policy_that_is_not_config_policy_json_fails(tmp_path):
    # As if the deployment still had a copy of its own, which had drifted.
    docs = render(tmp_path, [add_rule("deny_rules", {"name": "k8s-self-test", "source": {"principals": ["spiffe://example.org/gone"]}})])
    report = validate_k8s.validate(docs, CRD_DIR, VERSION, str(REPO / "config" / "policy.json"))
    assert_fails(report, "config/policy.json as it is (a copy that has drifted?)")


def test_an_edit_of_config_policy_json_alone_reaches_the_deployment(tmp_path):
    before = render(tmp_path / "a")
    after = render(tmp_path / "b", [add_rule("deny_rules", {"name": "k8s-self-test", "source": {"principals": ["spiffe://example.org/gone"]}})])

    def policy_map(docs):
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        dep = next(d for d in docs if d["kind"] == "Deployment")
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        used = [v["configMap"]["name"] for v in volumes if "configMap" in v]
        return cm["metadata"]["name"], cm["data"]["policy.json"], used

    name_a, _, used_a = policy_map(before)
    name_b, text_b, used_b = policy_map(after)
    assert "k8s-self-test" in text_b
    # A new content hash in the name, and the Deployment follows it: a new
    # ConfigMap, and so a rolling update.
    assert name_a != name_b and used_a == [name_a] and used_b == [name_b]


def test_kustomize_refuses_a_symlink_to_the_policy(tmp_path):
    """Why the policy comes in through a base: a generator may not read a
    file outside its kustomization's directory, not through a symlink either
    (the same with current kustomize's default load restrictions)."""
    work = copy_tree(tmp_path)
    (work / "policy.json").symlink_to(POLICY)
    k = work / "kustomization.yaml"
    k.write_text(k.read_text().replace("bases:\n  - ../../config\n", "")
                 + "configMapGenerator:\n  - name: p\n    files:\n      - policy.json\n")
    out = subprocess.run([KUBECTL, "kustomize", str(work)], capture_output=True, text=True)
    assert out.returncode != 0 and "security; file" in out.stderr, out.stderr


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
            ("cert-manager/certificates.yaml", "    - spiffe://example.org/writer\n", "    - spiffe://example.org/scribe\n"),
            ("cert-manager/certificates.yaml", "  name: inventory-writer\n", "  name: inventory-scribe\n"),
            ("serviceaccounts.yaml", "name: inventory-writer\n", "name: inventory-scribe\n"),
        ],
    )
    # The new ID is granted nothing of the API (the health rule for
    # spiffe://example.org/* names it, which is not enough): refused. The
    # policy's writer principal now matches no certificate: noted.
    assert_fails(
        report,
        "its SPIFFE ID spiffe://example.org/scribe is granted nothing but health and reflection",
    )
    assert any("principal 'spiffe://example.org/writer' matches no client Certificate" in n for n in report.notes)


def test_a_policy_principal_without_a_certificate_is_noted(tmp_path):
    # A development identity, or a workload deployed elsewhere: it grants
    # nothing here, so it is noted (a typo shows), not refused.
    report = render_and_validate(
        tmp_path, [add_rule("allow_rules", {"name": "k8s-self-test", "source": {"principals": ["spiffe://example.org/billing"]},
                                            "request": {"paths": ["/grpc.health.v1.Health/Check"]}})]
    )
    assert report.errors == []
    assert any("principal 'spiffe://example.org/billing' matches no client Certificate's SPIFFE ID here" in n
               for n in report.notes)


def test_a_deny_rule_principal_without_a_certificate_passes(tmp_path):
    # As the development PKI's `outsider` in the shipped policy: denying an
    # identity that has no Certificate here is harmless.
    report = render_and_validate(
        tmp_path, [add_rule("deny_rules", {"name": "k8s-self-test", "source": {"principals": ["spiffe://example.org/intruder"]}})]
    )
    assert report.errors == []
    assert any("'spiffe://example.org/intruder' has no Certificate here" in n for n in report.notes)


def test_a_wildcard_principal_that_matches_a_certificate_passes(tmp_path):
    report = render_and_validate(
        tmp_path,
        [add_rule("allow_rules", {"name": "k8s-self-test", "source": {"principals": ["spiffe://example.org/ad*"]},
                                  "request": {"paths": ["/grpc.health.v1.Health/Check"]}})],
    )
    assert report.errors == []


def test_a_spiffe_id_for_a_missing_service_account_fails(tmp_path):
    report = render_and_validate(tmp_path, [("serviceaccounts.yaml", "name: inventory-reader\n", "name: inventory-readers\n")])
    assert_fails(report, "there is no ServiceAccount inventory/inventory-reader")


def test_a_spiffe_id_that_does_not_match_its_certificate_fails(tmp_path):
    report = render_and_validate(
        tmp_path, [("cert-manager/certificates.yaml", "    - spiffe://example.org/reader\n", "    - spiffe://example.org/reeder\n")]
    )
    assert_fails(report, "spiffe://example.org/reeder: the Certificate (and its ServiceAccount) should be named <prefix>-reeder, not 'inventory-reader'")


def test_a_spiffe_id_in_the_old_namespace_form_fails(tmp_path):
    # The form these manifests used while the policy was a separate copy;
    # the shipped policy names no such ID.
    report = render_and_validate(
        tmp_path,
        [("cert-manager/certificates.yaml", "    - spiffe://example.org/reader\n", "    - spiffe://example.org/ns/inventory/sa/inventory-reader\n")],
    )
    assert_fails(report, "'spiffe://example.org/ns/inventory/sa/inventory-reader' is not spiffe://<trust domain>/<name>")


def test_a_probe_identity_allowed_more_than_health_fails(tmp_path):
    # Reflection for every workload of the trust domain, as the shipped
    # policy had it: the probe's key, in every server pod, could use it.
    report = render_and_validate(
        tmp_path,
        [add_rule("allow_rules", {"name": "reflection-for-every-workload", "source": {"principals": ["spiffe://example.org/*"]},
                                  "request": {"paths": ["/grpc.reflection.v1.ServerReflection/*"]}})],
    )
    assert_fails(report, f"'reflection-for-every-workload' lets the probe identity {PROBE_ID} call", "it may call only the health service")


def test_a_probe_identity_not_allowed_health_check_fails(tmp_path):
    def drop_probe_rules(policy):
        policy["allow_rules"] = [r for r in policy.get("allow_rules", []) if not validate_k8s._applies_to(r, PROBE_ID)]

    report = render_and_validate(tmp_path, [policy_edit(drop_probe_rules)])
    assert_fails(report, f"no allow rule lets the probe identity {PROBE_ID} call /grpc.health.v1.Health/Check")


def test_a_probe_identity_denied_health_check_fails(tmp_path):
    report = render_and_validate(tmp_path, [add_rule("deny_rules", {"name": "k8s-self-test", "source": {"principals": [PROBE_ID]}})])
    assert_fails(report, f"deny rule 'k8s-self-test' denies the probe identity {PROBE_ID}", "no pod would ever become ready")


def test_an_invalid_namespace_name_fails(tmp_path):
    # What a rename to `order_book` would produce; no schema catches it.
    report = render_and_validate(tmp_path, [("namespace.yaml", "  name: inventory\n", "  name: inventory_ns\n")])
    assert_fails(report, "namespace name 'inventory_ns' is not a DNS-1123 label")


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
