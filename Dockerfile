# syntax=docker/dockerfile:1
# Not exercised by CI (no Docker engine there): build with `docker build -t mxguard .`
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mxguard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mxguard --create-home mxguard
COPY --from=build /src/target/release/mxguard /usr/local/bin/mxguard
USER mxguard
WORKDIR /var/lib/mxguard
ENV MXGUARD_LISTEN=0.0.0.0:8053
EXPOSE 8053
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD curl -fsS http://127.0.0.1:8053/healthz || exit 1
ENTRYPOINT ["mxguard"]
CMD ["serve"]
