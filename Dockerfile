# Build: docker build -t rds-csi-node .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libudev-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rds-csi-node

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libudev1 e2fsprogs xfsprogs util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rds-csi-node /usr/local/bin/rds-csi-node
ENTRYPOINT ["/usr/local/bin/rds-csi-node"]
