# syntax=docker/dockerfile:1
# docker build -t redis-probe:0.1.0 .
#
# Build with the Rust toolchain image, run from distroless (glibc, CA certificates, no shell)
# as the non-root user 65532, the UID the Kubernetes manifests expect.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Examples, tests and benches are not needed for the binary; cargo only reads their paths.
COPY examples ./examples
COPY tests ./tests
COPY benches ./benches
RUN cargo build --release --locked --bin redis-probe

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/redis-probe /usr/local/bin/redis-probe
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/redis-probe"]
