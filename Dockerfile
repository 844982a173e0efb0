# syntax=docker/dockerfile:1
# The spy image: tlsspy-agent, with its eBPF programs compiled in, and
# nothing else: no shell, no package manager, no libc (the agent is static).
#
#   bash scripts/build-image.sh [--push]     (linux/amd64 and linux/arm64)
#
# which runs `docker buildx build --platform linux/amd64,linux/arm64` with
# VERSION from Cargo.toml (scripts/version.sh) and REVISION from git. The
# plugin's default --image is ghcr.io/tlsspy/tlsspy-agent:v<its own version>,
# so plugin and image are released together under one version.
#
# Each platform builds natively (buildx runs the foreign one under QEMU): the
# eBPF object is compiled for the architecture it will probe (pt_regs differ
# between x86 and arm64), and the agent is built and statically linked by
# scripts/build-agent.sh, the same script CI runs outside any container.

# The one place the image's version defaults: it must equal Cargo.toml's
# (tests/tests/ship.rs checks, and the build stage refuses a mismatch).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# clang-19 compiles the eBPF programs against libbpf's headers; gcc builds
# capstone (Go return-site disassembly); readelf (binutils) checks the link.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang-19 llvm-19 libbpf-dev linux-libc-dev gcc libc6-dev binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG VERSION
RUN cargo_version="$(bash scripts/version.sh)" \
 && if [ "$cargo_version" != "$VERSION" ]; then \
      echo "VERSION=$VERSION but Cargo.toml says $cargo_version: build with scripts/build-image.sh" >&2; exit 1; \
    fi
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    bash scripts/build-agent.sh --out /out

# distroless/static: no shell, no package manager, a few KiB of /etc and
# a /tmp; the agent needs nothing else from its image (the spy pod mounts
# /sys, /sys/fs/bpf and tracefs from the host, and sees host /proc by hostPID).
FROM gcr.io/distroless/static-debian12 AS spy
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="tlsspy-agent" \
      org.opencontainers.image.description="tlsspy's spy: TLS plaintext of the pods on one node, via eBPF uprobes" \
      org.opencontainers.image.source="https://github.com/tlsspy/tlsspy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tlsspy-agent /usr/local/bin/tlsspy-agent
# Root, on purpose: loading eBPF programs and attaching uprobes needs
# CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, which the privileged spy pod grants.
USER 0:0
# The pod's one process. The plugin passes its arguments (--session, --node).
ENTRYPOINT ["/usr/local/bin/tlsspy-agent"]
CMD ["--session"]
