# The site agent, CPU build (burn's flex backend). For a GPU: site-agent-cuda.Dockerfile.
#   docker build -f deploy/docker/site-agent.Dockerfile -t fedseg-site-agent .
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p site-agent \
    && strip target/release/site-agent

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/fedseg fedseg \
    && mkdir -p /var/lib/fedseg /etc/fedseg \
    && chown fedseg /var/lib/fedseg
COPY --from=builder /src/target/release/site-agent /usr/local/bin/site-agent
USER fedseg
WORKDIR /var/lib/fedseg
VOLUME /var/lib/fedseg
ENTRYPOINT ["site-agent"]
CMD ["run", "--config", "/etc/fedseg/site.toml"]
