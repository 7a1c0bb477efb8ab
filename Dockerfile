# Multi-stage build of the server, client and certs binaries.
#
# Both base images are build arguments, so air-gapped builders can point them
# at local images (scripts/compose-e2e.sh builds both from Debian packages
# when they cannot be pulled). No "syntax" line and no registry access beyond
# the base images: this builds with the legacy builder and with BuildKit.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# 1. Dependencies only, against stub sources: stub build scripts, so the
#    build dependencies are compiled here too, and a stub for every bench and
#    test target the kit's manifest declares, since cargo checks that they
#    exist. This layer is rebuilt only when a Cargo.toml or Cargo.lock changes. Editing a source file or a
#    .proto rebuilds the workspace's own crates alone.
COPY Cargo.toml Cargo.lock ./
COPY crates/mtls-kit/Cargo.toml crates/mtls-kit/
COPY crates/loadbench/Cargo.toml crates/loadbench/
RUN mkdir -p src/bin crates/mtls-kit/src crates/mtls-kit/benches crates/loadbench/src \
 && for d in . crates/mtls-kit; do echo 'fn main() {}' > "$d/build.rs"; touch "$d/src/lib.rs"; done \
 && echo 'fn main() {}' > crates/loadbench/src/main.rs \
 && for b in server client certs; do echo 'fn main() {}' > "src/bin/$b.rs"; done \
 && awk '/^\[\[(bench|test)\]\]/ { dir = ($0 ~ /bench/) ? "benches" : "tests"; next } \
        dir && /^name *=/ { gsub(/"/, "", $3); print dir "/" $3 ".rs"; dir = "" }' crates/mtls-kit/Cargo.toml \
    | while read -r target; do mkdir -p "crates/mtls-kit/$(dirname "$target")"; echo 'fn main() {}' > "crates/mtls-kit/$target"; done \
 && cargo build --release --locked --bin server --bin client --bin certs \
 && rm -rf src build.rs crates

# 2. The real sources. Touch them so cargo sees them as newer than the stubs
#    (COPY keeps the build context's modification times).
COPY build.rs ./
COPY proto ./proto
COPY src ./src
COPY crates ./crates
RUN find build.rs proto src crates -type f -exec touch {} + \
 && cargo build --release --locked --bin server --bin client --bin certs \
 && mkdir -p /out \
 && cp target/release/server target/release/client target/release/certs /out/

FROM ${RUNTIME_IMAGE}
# A fixed non-root user. Compose's PKI volume is created owned by it (see
# docker-compose.yml), so the 0600 keys it writes stay readable by the server.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home app \
 && mkdir -p /app/certs /app/config \
 && chown app:app /app/certs
COPY --from=builder /out/ /usr/local/bin/
# The example policy is configuration, not a secret. Keys and certificates are
# never part of the image: they come from a volume at run time.
COPY config/policy.json /app/config/policy.json
USER app
WORKDIR /app
ENV SERVER_LISTEN=0.0.0.0:50051 \
    LOG_FORMAT=json
EXPOSE 50051
ENTRYPOINT ["server"]
