# syntax=docker/dockerfile:1
# One image with both programs, `sigil-server` and `sigil-agent` (package.json "bin"), on
# PATH. The Helm chart (charts/sigil) runs them by these names.
#
#   docker build -t sigil:0.1.0 .
#   docker run --rm sigil:0.1.0 sigil-server validate --config /etc/sigil/server.yaml
#
# Build: the full Node 20 image (python3, make and g++ for the SO_PEERCRED addon and
# better-sqlite3), `npm ci` (whose prepare step generates the protobuf code, builds the
# addon and compiles TypeScript into dist/), then development packages removed.
# Run: distroless Node 20, no shell, as the non-root user 65532.

ARG BUILD_IMAGE=node:20-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/nodejs20-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
# Where the runtime image keeps node; the programs' #! line points at it (no /usr/bin/env there).
ARG NODE_BINARY=/nodejs/bin/node
WORKDIR /src
COPY package.json package-lock.json binding.gyp tsconfig.json tsconfig.build.json ./
COPY scripts/gen-proto.mjs scripts/gen-proto.mjs
COPY proto/ proto/
COPY spiffe/ spiffe/
COPY common/ common/
COPY plugins/ plugins/
COPY server/ server/
COPY agent/ agent/
COPY bin/ bin/
RUN npm ci --no-audit --no-fund \
 && npm prune --omit=dev --no-audit --no-fund \
 && sed -i "1s|^#!.*|#!${NODE_BINARY}|" bin/sigil-server.js bin/sigil-agent.js \
 && chmod 0755 bin/sigil-server.js bin/sigil-agent.js \
 && mkdir -p /out/path \
 && ln -s /app/bin/sigil-server.js /out/path/sigil-server \
 && ln -s /app/bin/sigil-agent.js /out/path/sigil-agent

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="sigil" \
      org.opencontainers.image.description="Sigil SPIFFE server and agent" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/bin/ ./bin/
COPY --from=build /src/dist/ ./dist/
COPY --from=build /src/node_modules/ ./node_modules/
COPY --from=build /src/build/Release/peercred.node ./build/Release/peercred.node
COPY --from=build /out/path/ /usr/local/bin/
USER 65532:65532
# The base image starts node; these images start a program by name instead.
ENTRYPOINT []
CMD ["sigil-server", "--help"]
