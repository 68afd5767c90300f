# syntax=docker/dockerfile:1
# check=error=true

# outbox-relay container image: a static Go binary on distroless, run as a
# non-root user with nothing else in the image (no shell, no package manager).
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse --short HEAD) -t outbox-relay .
#
# deploy/image_test.go lints this file with BuildKit's own checks and runs
# the same go build as below; docs/deploy.md says what that does and does not
# prove without a Docker engine.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Cross-compiled for the target platform on the build platform: the binary is
# pure Go (CGO_ENABLED=0), so no emulation is needed for multi-arch images.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=${TARGETOS} GOARCH=${TARGETARCH} CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/relay ./cmd/relay

# static-debian12 has CA certificates, /etc/passwd with the nonroot user and
# tzdata, and nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="outbox-relay" \
      org.opencontainers.image.description="Publishes every committed row of a PostgreSQL outbox table to NATS JetStream, once each, in commit order" \
      org.opencontainers.image.source="https://github.com/outbox-relay/outbox-relay" \
      org.opencontainers.image.url="https://github.com/outbox-relay/outbox-relay" \
      org.opencontainers.image.documentation="https://github.com/outbox-relay/outbox-relay/blob/main/docs/deploy.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/relay /relay
USER 65532:65532
# /metrics, /healthz and /readyz (--http-addr, RELAY_HTTP_ADDR).
EXPOSE 8081
ENTRYPOINT ["/relay"]
CMD ["run"]
