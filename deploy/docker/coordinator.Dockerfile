# The coordinator: a small runtime image (no burn, no GPU libraries).
#   docker build -f deploy/docker/coordinator.Dockerfile -t fedseg-coordinator .
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# protoc is vendored by the proto crate's build script: no system packages needed.
RUN cargo build --release --locked -p coordinator \
    && strip target/release/coordinator

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/fedseg fedseg \
    && mkdir -p /var/lib/fedseg /etc/fedseg \
    && chown fedseg /var/lib/fedseg
COPY --from=builder /src/target/release/coordinator /usr/local/bin/coordinator
COPY deploy/scripts/issue-certs.sh /usr/local/bin/fedseg-issue-certs
USER fedseg
WORKDIR /var/lib/fedseg
VOLUME /var/lib/fedseg
EXPOSE 7443
ENTRYPOINT ["coordinator"]
CMD ["serve", "--config", "/etc/fedseg/coordinator.toml"]
