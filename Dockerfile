# regwarm container image.
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t regwarm .
#   docker run -p 5000:5000 -p 9466:9466 -v regwarm-data:/var/lib/regwarm regwarm
# The default command is `regwarm run` with deploy/container/regwarm.yaml
# (a Docker Hub cache plus a push registry, listening on 0.0.0.0); mount
# your own config at /etc/regwarm/regwarm.yaml, or pass serve/worker
# (deploy/compose, deploy/kubernetes).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so that source edits reuse this layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same flags as `make build` (Makefile LDFLAGS), statically linked.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /regwarm ./cmd/regwarm
# The data directory, owned by the image's non-root user, so that a fresh
# named volume mounted there is writable.
RUN mkdir -p /rootfs/var/lib/regwarm /rootfs/etc/regwarm \
 && cp deploy/container/regwarm.yaml /rootfs/etc/regwarm/regwarm.yaml

# distroless static: CA certificates, /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /regwarm /regwarm
COPY --from=build /rootfs/etc/regwarm/ /etc/regwarm/
COPY --from=build --chown=65532:65532 /rootfs/var/lib/regwarm/ /var/lib/regwarm/
USER 65532:65532
VOLUME ["/var/lib/regwarm"]
# 5000: registry API (serve.listen), 9466: /metrics /healthz /readyz (metrics.listen)
EXPOSE 5000 9466
ENTRYPOINT ["/regwarm"]
CMD ["run", "--config", "/etc/regwarm/regwarm.yaml"]
