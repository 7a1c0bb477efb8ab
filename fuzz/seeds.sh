#!/usr/bin/env bash
# Regenerates the committed seed corpora under fuzz/corpus/. Run it when the
# policy format or the identity rules change; scripts/fuzz.sh only reads the
# committed files. Needs openssl and python3.
#
#   fuzz/seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- policy: the shipped policy plus documents in the shapes the tests use.
p=corpus/policy
rm -rf "$p" && mkdir -p "$p"
cp ../config/policy.json "$p/config-policy.json"
cat > "$p/deny-wins.json" <<'JSON'
{"name":"p","deny_rules":[{"name":"no-admins-purge","source":{"principals":["spiffe://example.org/admin"]},"request":{"paths":["/svc/Purge"]}}],"allow_rules":[{"name":"admins","source":{"principals":["spiffe://example.org/admin"]}}]}
JSON
cat > "$p/match-all.json" <<'JSON'
{"name":"p","allow_rules":[{"name":"all"}]}
JSON
cat > "$p/patterns.json" <<'JSON'
{"name":"p","allow_rules":[{"name":"a","source":{"principals":["*","spiffe://example.org/*","*.example.org","*abc*","CN=reporting,OU=analytics,O=Example Corp"]},"request":{"paths":["/pkg.Svc/*","*Get","/exact/Method",""]}}]}
JSON
cat > "$p/headers.json" <<'JSON'
{"name":"p","allow_rules":[{"name":"h","request":{"paths":["/svc/Get"],"headers":[{"key":"x-tenant","values":["acme","*-corp"]},{"key":"trace-bin","values":["*"]},{"key":"X-Upper","values":["a*"]}]}}]}
JSON
cat > "$p/audit.json" <<'JSON'
{"name":"audited","allow_rules":[{"name":"readers-read","source":{"principals":["spiffe://example.org/reader"]},"request":{"paths":["/inventory.v1.Inventory/GetItem"]}}],"audit_logging_options":{"audit_condition":"ON_DENY_AND_ALLOW","audit_loggers":[{"name":"stdout_logger","config":{},"is_optional":false}]}}
JSON
cat > "$p/invalid-unknown-field.json" <<'JSON'
{"name": "p", "allow_rules": [{"name": "a", "sauce": {}}]}
JSON
cat > "$p/invalid-header.json" <<'JSON'
{"name":"p","allow_rules":[{"name":"a","request":{"headers":[{"key":":path","values":["x"]},{"key":"grpc-timeout","values":["1"]}]}}],"deny_rules":[]}
JSON

# --- certificates: small Ed25519 leaves with the subjects and SANs the
# identity rules care about.
c=corpus/identity
n=corpus/rfc2253
rm -rf "$c" "$n" && mkdir -p "$c" "$n"
openssl genpkey -algorithm ed25519 -out "$tmp/key.pem" 2>/dev/null
cert() { # NAME SUBJECT [openssl req options...]
    local name=$1 subject=$2
    shift 2
    openssl req -x509 -new -key "$tmp/key.pem" -days 1 -outform DER -out "$c/$name.der" \
        -subj "$subject" "$@" 2>/dev/null
}
cert spiffe-reader "/O=Example Corp/CN=reader" \
    -addext "subjectAltName=URI:spiffe://example.org/reader,DNS:reader.example.org"
cert dns-only "/CN=svc" -addext "subjectAltName=DNS:svc.internal,DNS:*.svc.internal,IP:10.0.0.1,email:a@b.c"
cert several-uris "/CN=x" \
    -addext "subjectAltName=URI:urn:example:x,URI:spiffe://Bad/../x,URI:spiffe://td.example/ok/path"
cert subject-only "/C=DE/ST=Berlin/L=Berlin/O=Example Corp/OU=analytics/CN=reporting/emailAddress=r@example.org"
cert multi-valued "/DC=org/DC=example/O=Org/CN=a+OU=b+UID=c" -multivalue-rdn
cert escapes '/CN=#lead ,;"\\<>= trail \/O= x'
cert utf8 "/CN=Grüße/O=Zürich" -utf8
cert bmp "/CN=Ωmega/O=Ελλάς" -utf8 -config <(printf '[req]\ndistinguished_name=dn\nstring_mask=default\n[dn]\n')
cert serial-number "/serialNumber=42/CN=odd"
cert empty-subject "/" -addext "subjectAltName=URI:spiffe://example.org/anon"

# --- names: the DER of each certificate's subject, for the rfc2253 target,
# plus one whole certificate (the target accepts both).
python3 - "$c" "$n" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]

def tlv(buf, i):
    """Returns (start, end) of the TLV at i, i.e. buf[start:end] is it whole."""
    j = i + 1
    length = buf[j]
    j += 1
    if length & 0x80:
        k = length & 0x7F
        length = int.from_bytes(buf[j:j + k], "big")
        j += k
    return i, j, j + length  # start, content start, end

for f in sorted(os.listdir(src)):
    der = open(os.path.join(src, f), "rb").read()
    _, cert_body, _ = tlv(der, 0)
    _, tbs_body, _ = tlv(der, cert_body)
    i = tbs_body
    if der[i] == 0xA0:  # [0] version
        i = tlv(der, i)[2]
    for _ in range(3):  # serial, signature algorithm, issuer
        i = tlv(der, i)[2]
    i = tlv(der, i)[2]  # validity
    start, _, end = tlv(der, i)  # subject
    open(os.path.join(dst, f.replace(".der", ".name.der")), "wb").write(der[start:end])

# Names openssl req will not write: an unknown OID, a non-string value and
# the rarer string types.
def der(tag, content):
    assert len(content) < 0x80
    return bytes([tag, len(content)]) + content
def atv(oid, value):
    return der(0x30, der(0x06, oid) + value)
def name(*rdns):
    return der(0x30, b"".join(der(0x31, b"".join(rdn)) for rdn in rdns))
CN, O = bytes([0x55, 4, 3]), bytes([0x55, 4, 10])
extra = {
    "unknown-oid": name([atv(bytes([0x2A, 3, 4]), der(0x0C, b"opaque"))], [atv(CN, der(0x0C, b"odd"))]),
    "integer-value": name([atv(CN, der(0x02, b"\x01\x00"))]),
    "t61-latin1": name([atv(O, der(0x14, b"caf\xe9"))]),
    "universal-string": name([atv(CN, der(0x1C, "\u00e9x".encode("utf-32-be")))]),
    "context-tag": name([atv(CN, der(0x80, b"raw"))]),
}
for f, b in extra.items():
    open(os.path.join(dst, f + ".name.der"), "wb").write(b)
PY
cp "$c/multi-valued.der" "$n/whole-certificate.der"
echo "seeds: $(ls corpus/policy | wc -l) policy, $(ls "$c" | wc -l) identity, $(ls "$n" | wc -l) rfc2253"
