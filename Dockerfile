# syntax=docker/dockerfile:1.7
# One image for all four GridHub services; the command picks the service:
#   docker run gridhub services.collection   (ENTRYPOINT is `python -m`)
#   docker run gridhub ops --help            (the gridhub operator command)
# Non-root, no build tools in the final stage, and nothing written outside /tmp and the /data volume, so it runs
# with a read-only root filesystem (compose `read_only: true`, k8s `readOnlyRootFilesystem: true`).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# --- build: the locked dependencies into /opt/venv, then the source, byte-compiled -------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /app
# Dependencies first (their own layer, rebuilt only when the lock changes). Every locked runtime package ships a
# manylinux wheel, so no compiler is needed. The project itself is not installed: the services run from /app,
# where they find contracts/ (customers and workorders read the WSDL at start-up) beside libs/ and services/.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev --no-install-project
COPY libs/ libs/
COPY services/ services/
COPY ops/ ops/
COPY contracts/ contracts/
RUN /opt/venv/bin/python -m compileall -q -j 0 libs services ops

# --- runtime -----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG GRIDHUB_UID=10001
LABEL org.opencontainers.image.title="gridhub" \
      org.opencontainers.image.description="GridHub services: collection, customers, workorders, readside"
RUN groupadd --system --gid "${GRIDHUB_UID}" gridhub \
 && useradd --system --uid "${GRIDHUB_UID}" --gid gridhub --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin gridhub \
 && install -d -o gridhub -g gridhub -m 0750 /data
# Root owns the code and the venv: the service can read them, never change them.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /app
# Fail the build, not the first start, when a service or the operator command does not start, or a time zone
# is missing (the image carries no stack/, bench/ or tests/: the import contract keeps product code off them).
RUN python -c "import zoneinfo; zoneinfo.ZoneInfo('Europe/Copenhagen')" \
 && for name in collection customers workorders readside vee; do python -m "services.$name" --help >/dev/null; done \
 && python -m ops --help >/dev/null
USER ${GRIDHUB_UID}:${GRIDHUB_UID}
# collection: REST 8001, FTP 2121 (+ passive 30000-30099); customers 8082; workorders 8083; readside 8004.
EXPOSE 8001 2121 8082 8083 8004
ENTRYPOINT ["python", "-m"]
CMD ["services.collection"]
