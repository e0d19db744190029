# syntax=docker/dockerfile:1
# Not exercised by CI (no Docker engine there): build with `docker build -t mxguard .`
# contrib/compose.yaml runs two instances of it on PostgreSQL.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin mxguard

FROM debian:bookworm-slim
# ca-certificates: the provider APIs' and MX hosts' TLS chains. No curl: `mxguard health` is
# the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mxguard --create-home mxguard
COPY --from=build /src/target/release/mxguard /usr/local/bin/mxguard
USER mxguard
WORKDIR /var/lib/mxguard
# The SQLite store (the default) lives on the volume; with PostgreSQL it stays empty.
VOLUME /var/lib/mxguard
ENV MXGUARD_LISTEN=0.0.0.0:8053 \
    MXGUARD_STORE_URL=sqlite:///var/lib/mxguard/mxguard.db
EXPOSE 8053
# Readiness, not liveness: /readyz answers 200 only while the store answers. `mxguard health`
# asks the listen address of the configuration (MXGUARD_LISTEN, on loopback) and exits 0 or 1;
# a config that requires a token for /readyz needs MXGUARD_TOKEN_FILE (or open_readyz = true).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["mxguard", "health"]
ENTRYPOINT ["mxguard"]
CMD ["serve"]
