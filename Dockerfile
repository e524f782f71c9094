# syntax=docker/dockerfile:1
# The operator image: built with the committed Cargo.lock (--locked), run from distroless as
# the nonroot user (65532) with no shell. CI runs the same cargo command outside Docker.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace members for tests and simulation: cargo needs every member to load the
# workspace; the shipped binary never links them.
COPY testbed ./testbed
COPY sim ./sim
# The caches only speed up rebuilds; the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin eagle-eye-operator \
    && cp target/release/eagle-eye-operator /eagle-eye-operator

# glibc and libgcc for the dynamically linked binary, CA certificates for the system roots,
# nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /eagle-eye-operator /eagle-eye-operator
# nonroot:nonroot in distroless; numeric so that the kubelet can verify runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/eagle-eye-operator"]
CMD ["run"]
