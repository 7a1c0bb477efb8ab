#!/usr/bin/env python3
"""Validates the rendered Kubernetes manifests (the output of
`kubectl kustomize deploy/kubernetes`), offline.

Run by scripts/validate-k8s.sh, which installs the pinned tools first. Checks:

1. schemas: every built-in resource against the Kubernetes API schema of the
   pinned version (kubernetes-validate, strict: an unknown or misspelled field
   is an error); every cert-manager resource against cert-manager's CRD
   schema, made strict the same way (unknown fields are errors, as with
   `kubectl apply`'s default server-side strict field validation). Any other
   kind is an error: nothing goes unvalidated.
2. identities: the SPIFFE IDs in the Certificates and the principals in the
   A43 policy (read from the rendered ConfigMap, i.e. what would be deployed:
   config/policy.json) agree, in both directions: every allow-rule principal
   matches a client Certificate (deny-rule principals need not), and every
   client Certificate but the probe's is granted some method beyond health
   and reflection; each SPIFFE ID is spiffe://<trust domain>/<name>, one
   trust domain, for a Certificate and a ServiceAccount both named
   <prefix>-<name>; the probe identity may call the health service (Check,
   Watch) and nothing else, is allowed Check and not denied it.
3. wiring: the server's certificate, key, CA bundle and policy paths resolve
   to mounted Secret/ConfigMap keys (no subPath, which would never see a
   renewal); the probes present the probe identity; the grace period covers
   preStop plus the drain timeout; the hardening the README promises is there.
4. metrics: the server's metrics endpoint (SERVER_METRICS_LISTEN) listens on
   a non-loopback address at a TCP containerPort named `metrics` (9464), the
   pod carries the prometheus.io/ scrape annotations for it, and the
   NetworkPolicies admit that port from the `monitoring` namespace and from
   nowhere else (and still admit the gRPC port).
5. names: namespaces, Service names, other object names and the
   Certificates' DNS names are what the API server and cert-manager accept
   (DNS-1123 / DNS-1035), which the schemas do not check.
6. with --expect-policy config/policy.json: the policy ConfigMap holds that
   file byte for byte (the deployment's policy is the shipped one, not a
   copy).

Exits 1 with a list of every problem, 0 with a summary if there is none.
"""

from __future__ import annotations

import argparse
import copy
import glob
import ipaddress
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import jsonschema
import yaml

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Default of SERVER_DRAIN_TIMEOUT_SECS (src/config.rs).
DEFAULT_DRAIN_SECS = 10
# Slack the grace period must leave after preStop + drain, for a slow node.
MIN_SHUTDOWN_SLACK_SECS = 5
# The metrics endpoint: the server's default SERVER_METRICS_LISTEN (loopback,
# unreachable from outside the pod; crates/mtls-kit/src/metrics/mod.rs), the
# port Prometheus scrapes, and the only namespace allowed to.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
METRICS_PORT = 9464
METRICS_PATH = "/metrics"
MONITORING_NAMESPACE = "monitoring"
# Set by the API server on every namespace, from its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
GRPC_PORT = 50051


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema_checked: list[str] = field(default_factory=list)

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")


def ref(doc: dict) -> str:
    md = doc.get("metadata") or {}
    ns = md.get("namespace")
    return f"{doc.get('kind')}/{ns + '/' if ns else ''}{md.get('name')}"


# ---------------------------------------------------------------- schemas


def _strict_crd_schema(node: Any, top: bool = True) -> Any:
    """An openAPIV3Schema as JSON Schema that rejects unknown fields."""
    if isinstance(node, list):
        return [_strict_crd_schema(n, False) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict_crd_schema(v, False) for k, v in node.items()}
    # OpenAPI's `nullable` is not JSON Schema: spell it as a type union.
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if top and "metadata" in out.get("properties", {}):
        # The CRD leaves metadata open (the API server validates it as
        # ObjectMeta); these manifests only ever use these fields.
        out["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    return out


def _count_cel(node: Any) -> int:
    if isinstance(node, list):
        return sum(_count_cel(n) for n in node)
    if isinstance(node, dict):
        own = len(node.get("x-kubernetes-validations", []))
        return own + sum(_count_cel(v) for v in node.values())
    return 0


def load_crd_schemas(crd_dir: str) -> dict[tuple[str, str], tuple[dict, str, int]]:
    """(apiVersion, kind) -> (strict JSON schema, scope, CEL rule count)."""
    found = {}
    paths = sorted(glob.glob(os.path.join(crd_dir, "*.yaml")))
    if not paths:
        raise SystemExit(f"error: no CRD files in {crd_dir}")
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for v in spec["versions"]:
                    if not v.get("served", True):
                        continue
                    raw = v["schema"]["openAPIV3Schema"]
                    key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
                    found[key] = (_strict_crd_schema(raw), spec["scope"], _count_cel(raw))
    return found


def validate_schemas(docs: list[dict], crds: dict, k8s_version: str, report: Report) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    for doc in docs:
        where = ref(doc)
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in crds:
            schema, scope, cel = crds[key]
            before = len(report.errors)
            validator = jsonschema.Draft7Validator(schema)
            errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for e in errs:
                path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                report.error(where, f"{path}: {e.message} [cert-manager CRD schema]")
            if scope == "Cluster" and (doc.get("metadata") or {}).get("namespace"):
                report.error(where, "cluster-scoped kind with a namespace")
            if scope == "Namespaced" and not (doc.get("metadata") or {}).get("namespace"):
                report.error(where, "namespaced kind without metadata.namespace")
            if cel:
                report.notes.append(f"{where}: {cel} CEL rule(s) of its CRD not evaluated offline")
            if len(report.errors) == before:
                report.schema_checked.append(f"{where} (cert-manager CRD schema)")
            continue
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except SchemaNotFoundError:
            report.error(where, f"no schema for {key[0]} {key[1]} (neither Kubernetes {k8s_version} nor a known CRD)")
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            report.error(where, f"{path}: {e.message} [Kubernetes {k8s_version} schema, strict]")
            continue
        report.schema_checked.append(f"{where} (Kubernetes {k8s_version}, strict)")


# ---------------------------------------------------------------- identities

# A workload's SPIFFE ID is spiffe://<trust domain>/<name>, and its
# Certificate and ServiceAccount are both named <prefix>-<name>
# (inventory-reader: spiffe://example.org/reader). This is the form of the
# development PKI's identities (certs/README.md), because the policy deployed
# is the shipped one, config/policy.json, which names those. (While the
# deployment had a policy file of its own, the IDs here were
# spiffe://<td>/ns/<namespace>/sa/<account>; a flat ID names no namespace or
# account, so what ties an identity to its account is now the Certificate's
# name.) <name> is one path segment, a DNS label, so that <prefix>-<name> is
# a valid ServiceAccount name.
SPIFFE_RE = re.compile(r"^spiffe://([a-z0-9._-]+)/([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)$")
# What the probe identity may call: the health service, nothing else. Watch
# is allowed as well as Check because the shipped policy grants health
# (both) to every workload of the trust domain, and the probe is one; health
# tells nothing about the data and changes nothing. Patterns such as
# /grpc.health.v1.Health/* are refused: they would also cover methods the
# health service may gain.
PROBE_MAY_CALL = (HEALTH_CHECK, "/grpc.health.v1.Health/Watch")
# Services every workload may be granted without that being a sign the policy
# knows it: a client Certificate must be granted something outside these.
KIT_SERVICE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def a43_matches(pattern: str, value: str) -> bool:
    """gRPC A43 string matching, as the server implements it: "*" is any
    non-empty value, a leading "*" a suffix match (taken first), a trailing
    "*" a prefix match, anything else exact (case-sensitive)."""
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def policy_from_configmaps(docs: list[dict], report: Report) -> tuple[dict | None, str]:
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "policy.json" in (doc.get("data") or {}):
            try:
                return json.loads(doc["data"]["policy.json"]), ref(doc)
            except json.JSONDecodeError as e:
                report.error(ref(doc), f"policy.json is not valid JSON: {e}")
                return None, ref(doc)
    report.error("policy", "no ConfigMap with a policy.json key in the rendered output")
    return None, ""


def _rules(policy: dict) -> Iterable[tuple[str, dict]]:
    for kind in ("deny_rules", "allow_rules"):
        for rule in policy.get(kind) or []:
            yield kind, rule


def _principals(rule: dict) -> list[str]:
    return (rule.get("source") or {}).get("principals") or []


def _paths(rule: dict) -> list[str]:
    return (rule.get("request") or {}).get("paths") or []


def _applies_to(rule: dict, sid: str) -> bool:
    """Whether the rule's source admits this SPIFFE ID (no principals: every peer)."""
    principals = _principals(rule)
    return not principals or any(a43_matches(p, sid) for p in principals)


def _decides(rule: dict, sid: str, path: str) -> bool:
    """Whether the rule matches a call of `path` by `sid` that sends no
    metadata (a rule with header conditions never matches such a call: an
    absent header matches nothing, A43)."""
    if (rule.get("request") or {}).get("headers"):
        return False
    paths = _paths(rule)
    return _applies_to(rule, sid) and (not paths or any(a43_matches(p, path) for p in paths))


def check_identities(docs: list[dict], report: Report, probe_secret: str | None) -> dict:
    certs = [d for d in docs if d.get("kind") == "Certificate" and d.get("apiVersion", "").startswith("cert-manager.io/")]
    sas = {((d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name"))
           for d in docs if d.get("kind") == "ServiceAccount"}
    policy, policy_where = policy_from_configmaps(docs, report)

    client_ids: dict[str, str] = {}  # SPIFFE ID -> Certificate
    server_ids: dict[str, str] = {}
    trust_domains = set()
    probe_id = None
    for cert in certs:
        where = ref(cert)
        spec = cert.get("spec") or {}
        if spec.get("isCA"):
            if spec.get("uris"):
                report.error(where, "a CA certificate should carry no SPIFFE ID")
            continue
        usages = set(spec.get("usages") or [])
        uris = spec.get("uris") or []
        spiffe = [u for u in uris if str(u).startswith("spiffe://")]
        if len(spiffe) != 1:
            report.error(where, f"needs exactly one spiffe:// URI SAN, has {len(spiffe)}")
            continue
        sid = spiffe[0]
        m = SPIFFE_RE.match(sid)
        md = cert.get("metadata") or {}
        ns, name = md.get("namespace"), md.get("name")
        if not m:
            report.error(where, f"{sid!r} is not spiffe://<trust domain>/<name> (one path segment: lower-case letters, digits, '-')")
        else:
            td, id_name = m.groups()
            trust_domains.add(td)
            if not str(name).endswith(f"-{id_name}"):
                report.error(where, f"{sid}: the Certificate (and its ServiceAccount) should be named <prefix>-{id_name}, not {name!r}")
        if (ns, name) not in sas:
            report.error(where, f"{sid}: there is no ServiceAccount {ns}/{name} (each Certificate is named after the ServiceAccount of the workload that mounts it)")
        if "client auth" in usages:
            if sid in client_ids:
                report.error(where, f"{sid} is also the SPIFFE ID of {client_ids[sid]}")
            client_ids[sid] = where
            if probe_secret and spec.get("secretName") == probe_secret:
                probe_id = sid
        elif "server auth" in usages:
            server_ids[sid] = where
        else:
            report.error(where, "usages name neither \"client auth\" nor \"server auth\"")
    if len(trust_domains) > 1:
        report.error("Certificates", f"more than one trust domain: {sorted(trust_domains)}")
    if not client_ids:
        report.error("Certificates", "no client Certificate (usage \"client auth\") found")
    if probe_secret and probe_id is None:
        report.error("Certificates", f"no client Certificate writes the probe's Secret {probe_secret!r}")

    if policy is None:
        return {"clients": client_ids, "server": server_ids}

    # A principal that names no client certificate here (exactly or by
    # pattern) is noted, not refused. The shipped policy is also the
    # development one (config/policy.json), so it names the development
    # identities: one denied everything (`outsider`), and any a team adds to
    # DEV_IDENTITIES for a workload that runs elsewhere (another cluster,
    # another issuer). Such a rule grants nothing to anything in this
    # cluster; requiring a Certificate here would make every new identity an
    # edit of the manifests. The note still shows a typo.
    granted: set[str] = set()  # client IDs granted more than the kit's services
    for kind, rule in _rules(policy):
        principals = _principals(rule)
        for p in principals:
            if any(a43_matches(p, sid) for sid in client_ids):
                continue
            if kind == "deny_rules":
                report.notes.append(f"{policy_where}: deny rule {rule.get('name')!r}: principal {p!r} has no Certificate here (nothing to deny in this cluster)")
            else:
                report.notes.append(f"{policy_where}: allow rule {rule.get('name')!r}: principal {p!r} matches no client Certificate's SPIFFE ID here (a workload deployed elsewhere, or a typo)")
        if kind == "allow_rules":
            paths = _paths(rule)
            if not paths or any(not p.startswith(KIT_SERVICE_PREFIXES) for p in paths):
                granted |= {sid for sid in client_ids if _applies_to(rule, sid)}
    # Every client certificate but the probe's is granted something of the
    # service's own API by some allow rule. (It used to be enough to be named
    # by an allow rule at all; but the shipped policy grants health to
    # spiffe://<trust domain>/*, which names every Certificate, so a
    # Certificate for an identity the policy does not know would pass.)
    for sid, where in sorted(client_ids.items()):
        if sid != probe_id and sid not in granted:
            report.error(where, f"its SPIFFE ID {sid} is granted nothing but health and reflection by the policy ({policy_where}): "
                                "no allow rule names it for the service's own methods")

    # The probe: the health service only; its key sits in every server pod.
    if probe_id:
        for kind, rule in _rules(policy):
            # Conservatively, header conditions are ignored here: whoever
            # holds the probe's key can send any metadata.
            if kind != "allow_rules" or not _applies_to(rule, probe_id):
                continue
            paths = _paths(rule)
            if not paths or any(p not in PROBE_MAY_CALL for p in paths):
                report.error(policy_where, f"allow rule {rule.get('name')!r} lets the probe identity {probe_id} call {paths or 'every method'}; "
                                           f"it may call only the health service ({', '.join(PROBE_MAY_CALL)})")
        if not any(k == "allow_rules" and _decides(r, probe_id, HEALTH_CHECK) for k, r in _rules(policy)):
            report.error(policy_where, f"no allow rule lets the probe identity {probe_id} call {HEALTH_CHECK}")
        for kind, rule in _rules(policy):
            if kind == "deny_rules" and _decides(rule, probe_id, HEALTH_CHECK):
                report.error(policy_where, f"deny rule {rule.get('name')!r} denies the probe identity {probe_id} {HEALTH_CHECK}: no pod would ever become ready")
    return {"clients": client_ids, "server": server_ids, "probe": probe_id}


# ---------------------------------------------------------------- wiring


def _resolve(path: str, container: dict, pod: dict, where: str, report: Report, docs: list[dict], ns: str):
    """Which Secret or ConfigMap key a file path in the container reads."""
    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
    for m in mounts:
        base = m["mountPath"].rstrip("/") + "/"
        if path == m["mountPath"] and m.get("subPath"):
            key = m["subPath"]  # a single file mounted with subPath
        elif path.startswith(base):
            key = path[len(base):]
        else:
            continue
        if m.get("subPath"):
            report.error(where, f"{path}: mounted with subPath, which never sees Secret/ConfigMap updates")
        vol = next((v for v in pod.get("volumes") or [] if v["name"] == m["name"]), None)
        if vol is None:
            report.error(where, f"{path}: volume {m['name']!r} is not defined")
            return None
        if "secret" in vol:
            return ("Secret", vol["secret"].get("secretName"), key)
        if "configMap" in vol:
            name = vol["configMap"].get("name")
            cm = next((d for d in docs if d.get("kind") == "ConfigMap"
                       and d["metadata"]["name"] == name and d["metadata"].get("namespace") == ns), None)
            if cm is None:
                report.error(where, f"{path}: ConfigMap {name!r} is not in the rendered output")
            elif key not in (cm.get("data") or {}):
                report.error(where, f"{path}: ConfigMap {name!r} has no key {key!r}")
            return ("ConfigMap", name, key)
        report.error(where, f"{path}: volume {m['name']!r} is neither a Secret nor a ConfigMap")
        return None
    report.error(where, f"{path}: not under any volume mount")
    return None


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def check_workload(docs: list[dict], report: Report) -> str | None:
    """Checks the server Deployment; returns the probe identity's Secret."""
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        report.error("Deployment", f"expected exactly one Deployment, found {len(deployments)}")
        return None
    dep = deployments[0]
    where = ref(dep)
    ns = dep["metadata"].get("namespace")
    spec = dep.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    if spec.get("replicas") != 3:
        report.error(where, f"replicas is {spec.get('replicas')}, expected 3")
    containers = pod.get("containers") or []
    server = next((c for c in containers if c.get("name") == "server"), None)
    if server is None:
        report.error(where, "no container named 'server'")
        return None
    cwhere = f"{where} container server"

    # Hardening.
    psc = pod.get("securityContext") or {}
    sc = server.get("securityContext") or {}
    want = {
        "runAsNonRoot": sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation: false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities.drop [ALL]": "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
        "seccompProfile RuntimeDefault": ((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault"),
    }
    for what, ok in want.items():
        if not ok:
            report.error(cwhere, f"securityContext: {what} missing")
    res = server.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                report.error(cwhere, f"resources.{kind}.{r} missing")
    sa = pod.get("serviceAccountName")
    if not sa or sa == "default":
        report.error(where, "runs as the default ServiceAccount")

    # Environment and the files it names.
    env = {e["name"]: e.get("value") for e in server.get("env") or []}
    required = {
        "SERVER_LISTEN": "0.0.0.0:50051",
        "LOG_FORMAT": "json",
    }
    for name, value in required.items():
        if env.get(name) != value:
            report.error(cwhere, f"env {name} is {env.get(name)!r}, expected {value!r}")
    if "SERVER_MAX_CONNECTION_AGE_SECS" not in env:
        report.error(cwhere, "env SERVER_MAX_CONNECTION_AGE_SECS missing (no CRLs: connection age bounds how long an old handshake lives)")
    files = {}
    for name, want_key in (("SERVER_CERT", "tls.crt"), ("SERVER_KEY", "tls.key"), ("SERVER_CLIENT_CA", "ca.crt"), ("SERVER_POLICY", None)):
        path = env.get(name)
        if not path:
            report.error(cwhere, f"env {name} missing")
            continue
        got = _resolve(path, server, pod, cwhere, report, docs, ns)
        files[name] = got
        if got and want_key and (got[0] != "Secret" or got[2] != want_key):
            report.error(cwhere, f"{name}={path} reads {got}, expected the key {want_key!r} of a cert-manager Secret")
    if files.get("SERVER_POLICY") and files["SERVER_POLICY"][0] != "ConfigMap":
        report.error(cwhere, "SERVER_POLICY does not come from a ConfigMap")
    server_secret = files.get("SERVER_CERT", None)
    certs_by_secret = {((d.get("spec") or {}).get("secretName")): d for d in docs if d.get("kind") == "Certificate"}
    if server_secret:
        for name in ("SERVER_KEY", "SERVER_CLIENT_CA"):
            if files.get(name) and files[name][1] != server_secret[1]:
                report.error(cwhere, f"{name} is read from Secret {files[name][1]!r}, SERVER_CERT from {server_secret[1]!r}")
        cert = certs_by_secret.get(server_secret[1])
        if cert is None:
            report.error(cwhere, f"no Certificate writes Secret {server_secret[1]!r}")
        elif "server auth" not in ((cert.get("spec") or {}).get("usages") or []):
            report.error(ref(cert), "the server's certificate lacks the \"server auth\" usage")

    # Shutdown timing.
    drain = int(env.get("SERVER_DRAIN_TIMEOUT_SECS") or DEFAULT_DRAIN_SECS)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = ((server.get("lifecycle") or {}).get("preStop") or {})
    sleep = 0
    if "exec" in pre:
        cmd = pre["exec"].get("command") or []
        if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep"):
            sleep = int(cmd[1])
    elif "sleep" in pre:
        sleep = int(pre["sleep"].get("seconds", 0))
    if not pre:
        report.error(cwhere, "no preStop hook: the pod may receive new connections after SIGTERM")
    if grace < sleep + drain + MIN_SHUTDOWN_SLACK_SECS:
        report.error(where, f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + drain {drain} s + {MIN_SHUTDOWN_SLACK_SECS} s slack")

    # Probes: the image's client, over mTLS, as one identity.
    probe_secrets = set()
    for probe in ("livenessProbe", "readinessProbe"):
        p = server.get(probe)
        if not p:
            report.error(cwhere, f"{probe} missing")
            continue
        if "exec" not in p:
            report.error(cwhere, f"{probe} is not an exec probe (a grpc or tcp probe cannot present a client certificate)")
            continue
        argv = p["exec"].get("command") or []
        if not argv or os.path.basename(argv[0]) != "client" or argv[-1] != "health":
            report.error(cwhere, f"{probe} does not run `client ... health`: {shlex.join(argv)}")
            continue
        timeout = int(_flag(argv, "--timeout-secs") or 10)
        if timeout >= p.get("timeoutSeconds", 1):
            report.error(cwhere, f"{probe}: client --timeout-secs {timeout} is not below timeoutSeconds {p.get('timeoutSeconds', 1)}")
        for flag, key in (("--cert", "tls.crt"), ("--key", "tls.key"), ("--ca", "ca.crt")):
            path = _flag(argv, flag)
            if not path:
                report.error(cwhere, f"{probe}: no {flag}")
                continue
            got = _resolve(path, server, pod, cwhere, report, docs, ns)
            if got and (got[0] != "Secret" or got[2] != key):
                report.error(cwhere, f"{probe}: {flag} {path} reads {got}, expected key {key!r} of a Secret")
            elif got and flag != "--ca":
                probe_secrets.add(got[1])
        sn = _flag(argv, "--server-name")
        if server_secret and sn:
            cert = certs_by_secret.get(server_secret[1]) or {}
            if sn not in ((cert.get("spec") or {}).get("dnsNames") or []):
                report.error(cwhere, f"{probe}: --server-name {sn!r} is not a dnsName of the server certificate")
    if len(probe_secrets) > 1:
        report.error(cwhere, f"the probes use different identities: {sorted(probe_secrets)}")
    if server_secret and server_secret[1] in probe_secrets:
        report.error(cwhere, "the probes present the server's own certificate, not a probe identity")
    return next(iter(probe_secrets), None)


def _server_pod(docs: list[dict]) -> tuple[dict, dict, dict] | None:
    """(Deployment, pod template, server container), if there is one."""
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deps) != 1:
        return None  # check_workload reports it
    template = (deps[0].get("spec") or {}).get("template") or {}
    server = next((c for c in (template.get("spec") or {}).get("containers") or [] if c.get("name") == "server"), None)
    return (deps[0], template, server) if server else None


def _listen_address(value: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """host:port or [v6]:port, as the server parses it (a SocketAddr)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    try:
        return ipaddress.ip_address(host), int(port)
    except ValueError:
        return None


def _selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels, plus the common matchExpressions) selects labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def _only_monitoring(peer: dict) -> bool:
    """Whether a NetworkPolicy peer admits pods of the monitoring namespace only."""
    if "ipBlock" in peer or "namespaceSelector" not in peer:
        return False  # an address range, or the policy's own namespace
    sel = peer.get("namespaceSelector") or {}
    if (sel.get("matchLabels") or {}).get(NAMESPACE_NAME_LABEL) == MONITORING_NAMESPACE:
        return True
    return any(e.get("key") == NAMESPACE_NAME_LABEL and e.get("operator") == "In"
               and (e.get("values") or []) == [MONITORING_NAMESPACE]
               for e in sel.get("matchExpressions") or [])


def check_metrics(docs: list[dict], report: Report) -> None:
    """The metrics endpoint is reachable by Prometheus in `monitoring`, and by nothing else."""
    found = _server_pod(docs)
    if found is None:
        return
    dep, template, server = found
    where = f"{ref(dep)} container server"
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    ns = dep["metadata"].get("namespace")

    # 1. The listener: not loopback (the default), not off.
    env = {e["name"]: e.get("value") for e in server.get("env") or []}
    listen = env.get("SERVER_METRICS_LISTEN")
    if listen is None:
        report.error(where, f"env SERVER_METRICS_LISTEN missing: the server's default {DEFAULT_METRICS_LISTEN} is loopback, which Prometheus cannot scrape")
    else:
        parsed = _listen_address(listen)
        if parsed is None:
            report.error(where, f"env SERVER_METRICS_LISTEN is {listen!r}, expected a non-loopback address such as 0.0.0.0:{METRICS_PORT} (\"off\" disables metrics)")
        else:
            ip, port = parsed
            mapped = getattr(ip, "ipv4_mapped", None)
            if ip.is_loopback or (mapped is not None and mapped.is_loopback):
                report.error(where, f"env SERVER_METRICS_LISTEN is {listen!r}, a loopback address: Prometheus cannot scrape it from outside the pod")
            if port != METRICS_PORT:
                report.error(where, f"env SERVER_METRICS_LISTEN is {listen!r}, expected port {METRICS_PORT} (the containerPort, annotation and NetworkPolicy use it)")

    # 2. The containerPort.
    ports = server.get("ports") or []
    named = {p.get("name"): p for p in ports if p.get("name")}
    metrics = named.get("metrics")
    if metrics is None or metrics.get("containerPort") != METRICS_PORT or metrics.get("protocol", "TCP") != "TCP":
        report.error(where, f"no containerPort {METRICS_PORT} named 'metrics' (TCP): {[{k: p.get(k) for k in ('name', 'containerPort')} for p in ports]}")

    # 3. Scrape discovery: the conventional prometheus.io/ pod annotations.
    ann = (template.get("metadata") or {}).get("annotations") or {}
    for key, want in (("prometheus.io/scrape", "true"), ("prometheus.io/port", str(METRICS_PORT)), ("prometheus.io/path", METRICS_PATH)):
        if ann.get(key) != want:
            report.error(ref(dep), f"pod annotation {key} is {ann.get(key)!r}, expected {want!r}")
    # A Service port named metrics points at it.
    for svc in (d for d in docs if d.get("kind") == "Service"):
        for p in (svc.get("spec") or {}).get("ports") or []:
            if p.get("name") == "metrics" and p.get("targetPort") not in ("metrics", METRICS_PORT):
                report.error(ref(svc), f"port 'metrics' targets {p.get('targetPort')!r}, not the container's metrics port")

    # 4. NetworkPolicy: the policies that select the server pods for ingress
    # add up; any rule admitting the metrics port must admit the monitoring
    # namespace only, and one must.
    def number(port) -> int | None:
        if isinstance(port, int):
            return port
        if isinstance(port, str) and port.isdigit():
            return int(port)
        return (named.get(port) or {}).get("containerPort")

    def covers(rule: dict, want: int) -> bool:
        rports = rule.get("ports") or []
        if not rports:
            return True  # every port
        for p in rports:
            if p.get("protocol", "TCP") != "TCP":
                continue
            if "port" not in p:
                return True
            lo = number(p["port"])
            if lo is not None and lo <= want <= p.get("endPort", lo):
                return True
        return False

    policies = [np for np in docs if np.get("kind") == "NetworkPolicy"
                and (np.get("metadata") or {}).get("namespace") == ns
                and _selects((np.get("spec") or {}).get("podSelector"), pod_labels)
                and "Ingress" in ((np.get("spec") or {}).get("policyTypes") or ["Ingress"])]
    if not policies:
        report.error("NetworkPolicy", f"no NetworkPolicy selects the server pods for ingress: port {METRICS_PORT} is open to every pod")
        return
    admitted = grpc_admitted = False
    for np in policies:
        for i, rule in enumerate((np.get("spec") or {}).get("ingress") or []):
            grpc_admitted |= covers(rule, GRPC_PORT)
            if not covers(rule, METRICS_PORT):
                continue
            peers = rule.get("from") or []
            if not peers:
                report.error(ref(np), f"ingress rule {i} admits port {METRICS_PORT} from everywhere (no `from`)")
            for peer in peers:
                if not _only_monitoring(peer):
                    report.error(ref(np), f"ingress rule {i} admits port {METRICS_PORT} from {peer}, not only from namespace {MONITORING_NAMESPACE!r} ({NAMESPACE_NAME_LABEL})")
            if peers and all(_only_monitoring(p) for p in peers):
                admitted = True
    if not admitted:
        report.error("NetworkPolicy", f"no ingress rule admits port {METRICS_PORT} from namespace {MONITORING_NAMESPACE!r} ({NAMESPACE_NAME_LABEL}: {MONITORING_NAMESPACE})")
    if not grpc_admitted:
        report.error("NetworkPolicy", f"no ingress rule admits the gRPC port {GRPC_PORT}")


def check_rest(docs: list[dict], report: Report) -> None:
    services = [d for d in docs if d.get("kind") == "Service"]
    for s in services:
        if (s.get("spec") or {}).get("clusterIP") != "None":
            report.error(ref(s), "not headless (clusterIP: None): clients could not balance per RPC")
    for kind in ("Namespace", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"):
        if not any(d.get("kind") == kind for d in docs):
            report.error("resources", f"no {kind}")
    if any(d.get("kind") == "Secret" for d in docs):
        report.error("resources", "a Secret is part of the manifests; keys must come from cert-manager, never from the repository")
    text = yaml.safe_dump_all(docs)
    if "PRIVATE KEY" in text:
        report.error("resources", "a PEM private key appears in the rendered manifests")
    for np in (d for d in docs if d.get("kind") == "NetworkPolicy"):
        ports = {str(p.get("port")) for rule in (np.get("spec") or {}).get("ingress") or [] for p in rule.get("ports") or []}
        if not ports:
            report.error(ref(np), "an ingress rule without ports opens every port")
    for d in docs:
        if d.get("kind") == "Namespace":
            continue
        if not (d.get("metadata") or {}).get("namespace"):
            report.error(ref(d), "no metadata.namespace")


# What the API server demands of names, which the schemas do not say (so a
# name such as `order_book` would pass every check above and be refused by
# the cluster): namespaces are DNS-1123 labels, Services DNS-1035 labels,
# other objects DNS-1123 subdomains; a certificate's DNS names are host names.
_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL_RE = re.compile(f"^{_DNS1123_LABEL}$")
DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_LABEL}(?:\\.{_DNS1123_LABEL})*$")
DNS1035_LABEL_RE = re.compile(r"^[a-z](?:[-a-z0-9]*[a-z0-9])?$")


def check_names(docs: list[dict], report: Report) -> None:
    def bad(value, regex, limit) -> bool:
        return not isinstance(value, str) or len(value) > limit or not regex.match(value)

    for d in docs:
        md = d.get("metadata") or {}
        name, ns = md.get("name"), md.get("namespace")
        if d.get("kind") == "Namespace":
            if bad(name, DNS1123_LABEL_RE, 63):
                report.error(ref(d), f"namespace name {name!r} is not a DNS-1123 label (lower-case letters, digits, '-')")
        elif d.get("kind") == "Service":
            if bad(name, DNS1035_LABEL_RE, 63):
                report.error(ref(d), f"Service name {name!r} is not a DNS-1035 label (lower-case letters, digits, '-'; a letter first)")
        elif bad(name, DNS1123_SUBDOMAIN_RE, 253):
            report.error(ref(d), f"name {name!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-', '.')")
        if ns is not None and bad(ns, DNS1123_LABEL_RE, 63):
            report.error(ref(d), f"metadata.namespace {ns!r} is not a DNS-1123 label")
        if d.get("kind") == "Certificate":
            for dns in (d.get("spec") or {}).get("dnsNames") or []:
                if bad(dns, DNS1123_SUBDOMAIN_RE, 253) or any(len(label) > 63 for label in str(dns).split(".")):
                    report.error(ref(d), f"dnsName {dns!r} is not a valid host name")


# ---------------------------------------------------------------- main


def check_policy_source(docs: list[dict], report: Report, expected_path: str) -> None:
    """The deployed policy is the shipped one, byte for byte: config/policy.json
    reaches the ConfigMap through the config/ base, not through a copy."""
    with open(expected_path, encoding="utf-8") as f:
        want = f.read()
    maps = [d for d in docs if d.get("kind") == "ConfigMap" and "policy.json" in (d.get("data") or {})]
    if len(maps) != 1:
        report.error("policy", f"expected one ConfigMap with a policy.json key, found {len(maps)}")
    for cm in maps:
        if cm["data"]["policy.json"] != want:
            report.error(ref(cm), f"policy.json is not {expected_path} as it is (a copy that has drifted?)")


def validate(docs: list[dict], crd_dir: str, k8s_version: str, expected_policy: str | None = None) -> Report:
    report = Report()
    docs = [d for d in docs if d]
    if expected_policy:
        check_policy_source(docs, report, expected_policy)
    crds = load_crd_schemas(crd_dir)
    validate_schemas(docs, crds, k8s_version, report)
    probe_secret = check_workload(docs, report)
    check_metrics(docs, report)
    check_identities(docs, report, probe_secret)
    check_names(docs, report)
    check_rest(docs, report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rendered", help="output of `kubectl kustomize` (YAML stream), or - for stdin")
    ap.add_argument("--crd-dir", required=True, help="directory of cert-manager CRD YAML files")
    ap.add_argument("--k8s-version", required=True, help="Kubernetes API version to validate against, e.g. 1.35.0")
    ap.add_argument("--expect-policy", metavar="FILE",
                    help="the policy file the ConfigMap must hold byte for byte (config/policy.json)")
    args = ap.parse_args(argv)
    text = sys.stdin.read() if args.rendered == "-" else open(args.rendered, encoding="utf-8").read()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        print(f"FAIL: the rendered manifests are not valid YAML: {e}")
        return 1
    report = validate(docs, args.crd_dir, args.k8s_version, args.expect_policy)
    for line in report.schema_checked:
        print(f"  schema ok: {line}")
    for line in report.notes:
        print(f"  note: {line}")
    if report.errors:
        print(f"FAIL: {len(report.errors)} problem(s) in {len(docs)} resources:")
        for e in report.errors:
            print(f"  - {e}")
        return 1
    print(f"OK: {len(docs)} resources valid (Kubernetes {args.k8s_version} strict + cert-manager CRDs); "
          f"SPIFFE IDs and policy agree; wiring, probes, shutdown timing and metrics exposure checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
