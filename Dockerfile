# flowmap server image. CPU by default:
#   docker build -t flowmap:0.1.0-cpu .
# CUDA (a CUDA base image and a CUDA build of torch):
#   docker build -t flowmap:0.1.0-cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg TORCH_CUDA=yes --build-arg EXTRAS=serve,export,gpu .
# The install steps are deploy/install.sh, which CI runs too (tests/deploy/test_image.py).
# Configure with FLOWMAP_* variables (docs/server.md); mount your own models, e.g. at /models.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- base: the OS with Python 3 and venv
FROM ${BASE_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/install.sh /usr/local/lib/flowmap/install.sh
RUN bash /usr/local/lib/flowmap/install.sh system

# ---------------------------------------------------------------- build: torch + flowmap into /opt/flowmap
FROM base AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA=no
ARG EXTRAS=serve,export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowmap ./flowmap
COPY engines ./engines
COPY kernels ./kernels
COPY server ./server
COPY deploy/install.sh ./deploy/install.sh
RUN TORCH_SPEC="${TORCH_SPEC}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" TORCH_CUDA="${TORCH_CUDA}" \
    EXTRAS="${EXTRAS}" bash deploy/install.sh app /opt/flowmap

# ---------------------------------------------------------------- runtime: the venv, a non-root user
FROM base AS runtime
RUN groupadd --system --gid 10001 flowmap \
    && useradd --system --uid 10001 --gid flowmap --create-home --home-dir /home/flowmap flowmap \
    && mkdir -p /models
COPY --from=build /opt/flowmap /opt/flowmap
ENV PATH=/opt/flowmap/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    FLOWMAP_HOST=0.0.0.0 \
    FLOWMAP_PORT=8000
WORKDIR /home/flowmap
USER 10001:10001
EXPOSE 8000
# liveness without curl: the Python already in the image asks /healthz
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLOWMAP_PORT', '8000'), timeout=4)"]
# exec form: `flowmap serve` is PID 1 and gets SIGTERM itself, so a stop drains accepted requests
ENTRYPOINT ["flowmap", "serve"]
