# syntax=docker/dockerfile:1
# The ringtail image: the DaemonSet in deploy/ runs it (contract §5).
#   docker build -t ringtail:dev .
#   docker run --rm ringtail:dev version
# Two stages, so that the image carries the binary and the shared libraries it loads, and none
# of the toolchain.

# ---------------------------------------------------------------- build
# Debian bookworm, like the runtime stage: the binary links the same glibc and libsystemd it
# finds at run time. The Rust version is the one the repository is tested with; kube 5 needs
# at least 1.89.
FROM rust:1.95-bookworm AS build

# libsystemd-dev: the journal source links libsystemd (sd-journal), found with pkg-config.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsystemd-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The manifest names the benches ([[bench]]), and cargo refuses a manifest whose targets are
# missing, even when it builds none of them.
COPY benches benches
COPY src src

# --locked: exactly the dependency versions that were tested (Cargo.lock), or fail. The cache
# mounts keep the crates.io downloads and the compiled dependencies between builds (BuildKit),
# so changing a source file does not rebuild every crate; the binary is copied out of the
# cached target directory, which is not part of the image.
# --strip-debug: the release profile's line tables (for perf and local backtraces) are three
# quarters of the binary (52 of 67 MB at 0.1.0), and every node pulls the image. The symbols
# stay, so a backtrace still names its functions; a panic message carries its file and line
# without them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/ringtail /out/ringtail \
    && objcopy --strip-debug /out/ringtail

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# libsystemd0: the journal source's shared library. ca-certificates: the system roots, for a
# Loki behind HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsystemd0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A non-root default user, for everything that runs this image without saying who it runs as:
# `docker run ... version`, `check-config` in CI. The DaemonSet overrides it with
# `runAsUser: 0` on purpose (deploy/base/daemonset.yaml): the one capability ringtail keeps,
# DAC_READ_SEARCH, reaches the process only as uid 0, because Kubernetes cannot make an added
# capability ambient and no_new_privs (allowPrivilegeEscalation: false) makes file
# capabilities inert. 65532 is the distroless "nonroot" uid, high above any node user's.
RUN groupadd --system --gid 65532 ringtail \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ringtail

COPY --from=build /out/ringtail /usr/local/bin/ringtail

LABEL org.opencontainers.image.title="ringtail" \
      org.opencontainers.image.description="A log collector for Kubernetes nodes that ships every line to Grafana Loki, at least once." \
      org.opencontainers.image.licenses="Apache-2.0"

USER 65532:65532
# /metrics, /ready and /healthy (server.listen; the DaemonSet's http-metrics port).
EXPOSE 9080
ENTRYPOINT ["/usr/local/bin/ringtail"]
CMD ["run", "--config", "/etc/ringtail/ringtail.yaml"]
