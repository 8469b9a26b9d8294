# The site agent, CUDA build (burn-cuda; kernels are compiled by NVRTC at run time, so the
# build stage needs no CUDA toolkit and the runtime image brings libnvrtc).
#   docker build -f deploy/docker/site-agent-cuda.Dockerfile -t fedseg-site-agent:cuda .
#   docker run --gpus all ... fedseg-site-agent:cuda
# The CUDA version must be one the host's driver runs (12.8 needs driver ≥ 570; for CUDA 13
# use CUDA_VERSION=13.0.2 and CUDARC_CUDA_VERSION=13000, driver ≥ 580).
ARG CUDA_VERSION=12.8.1
FROM rust:1.95-bookworm AS builder
ARG CUDARC_CUDA_VERSION=12080
ENV CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p site-agent --features cuda \
    && strip target/release/site-agent

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
RUN useradd --system --uid 10001 --home-dir /var/lib/fedseg fedseg \
    && mkdir -p /var/lib/fedseg /etc/fedseg \
    && chown fedseg /var/lib/fedseg
COPY --from=builder /src/target/release/site-agent /usr/local/bin/site-agent
USER fedseg
WORKDIR /var/lib/fedseg
VOLUME /var/lib/fedseg
ENTRYPOINT ["site-agent"]
CMD ["run", "--config", "/etc/fedseg/site.toml"]
