# syntax=docker/dockerfile:1
# The redis-probe image: the release binary, the libraries it links, a CA bundle and the user
# 65532, FROM scratch (no shell, no package manager).
#
#   docker build --build-arg REVISION=$(git rev-parse --short=12 HEAD) -t redis-probe:0.1.0 .
#
# Without a registry, scripts/image builds the same last stage with buildah from a binary built
# on the machine (tests/image.rs builds and runs it); both lay the files out with
# scripts/image-rootfs.

# The builder, pinned by digest (the 1.95-bookworm tag of the Docker Official Image); Debian 12,
# as the machines the project is tested on.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The dependencies, in a layer of their own: rebuilt only when Cargo.toml or Cargo.lock
# changes. Cargo needs each declared target's file, so the crate and its bench are stubs here.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_paths.rs \
 && REDIS_PROBE_REVISION=deps cargo build --release --locked --bin redis-probe
# The crate itself (tests, examples and benches are not part of the binary).
COPY src ./src
ARG REVISION=unknown
RUN touch src/main.rs src/lib.rs \
 && REDIS_PROBE_REVISION=${REVISION} cargo build --release --locked --bin redis-probe
COPY scripts/image-rootfs ./scripts/
RUN scripts/image-rootfs target/release/redis-probe /rootfs

# The image. scripts/image gives buildah its own "build" context holding rootfs/.
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="redis-probe" \
      org.opencontainers.image.description="Kubernetes sidecar that health-checks a Redis Cluster and serves /livez, /readyz and /metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs/ /
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/redis-probe"]
