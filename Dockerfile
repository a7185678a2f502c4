# syntax=docker/dockerfile:1
# lorafuse images. Two targets:
#   docker build --target operator -t ghcr.io/lorafuse/operator:0.1.0 .
#       slim: the operator, `lorafuse render`, `lorafuse crd`, `lorafuse job verify`; no torch.
#   docker build --target merger -t ghcr.io/lorafuse/merger:0.1.0 .
#       the merge Job steps: torch, transformers, peft, llm-compressor.
#       CPU-only torch: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#       (or TORCH_VERSION=2.13.0+cpu with TORCH_FIND_LINKS naming a folder of wheels that
#       the build sees, e.g. `podman build -v /opt/wheels:/torch-wheels:ro`).
# Both run as the non-root user 10001.
#
# PYTHON_IMAGE: the base of every stage. The default is the public Python image; without
# an image registry, scripts/images.sh builds a Debian-based one locally and passes it here.
# It needs python3, pip (installing into the system interpreter) and ca-certificates.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the lorafuse wheel (pure Python), so no source tree lands in the images.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# src/lorafuse/{merger,serving,operator} are links to these top-level folders.
COPY src/ src/
COPY merger/ merger/
COPY serving/ serving/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- base: Python, the unprivileged user and its home.
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/lorafuse
RUN groupadd --gid 10001 lorafuse \
    && useradd --uid 10001 --gid 10001 --home-dir /home/lorafuse --create-home \
       --shell /usr/sbin/nologin lorafuse
WORKDIR /home/lorafuse

# ---- operator: slim, no torch.
FROM base AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lorafuse-operator" \
      org.opencontainers.image.description="lorafuse Kubernetes operator (ModelDeployment)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
# The second step fails the build if torch slipped in through a dependency.
RUN pip install --no-cache-dir "$(echo /wheels/lorafuse-*.whl)[operator]" \
    && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
USER 10001:10001
ENTRYPOINT ["lorafuse"]
CMD ["operator"]

# ---- merger: torch + the merge/quantize stack.
FROM base AS merger
ARG VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
# Empty: the default index (CUDA build on linux/amd64). A URL: that index for torch only.
ARG TORCH_INDEX_URL=""
# Empty: indexes only. A folder inside the build holding torch wheels (see the header).
ARG TORCH_FIND_LINKS=""
# Installed --no-deps like scripts/install-quantize.sh does (its other dependencies come
# with the `quantize` extra, except requests, which the extra lacks): its declared
# transformers cap would downgrade transformers.
ARG LLMCOMPRESSOR_VERSION=0.14.0.1
LABEL org.opencontainers.image.title="lorafuse-merger" \
      org.opencontainers.image.description="lorafuse merge, quantize and validate Job steps" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_INDEX_URL="$TORCH_INDEX_URL"; fi \
    && if [ -n "$TORCH_FIND_LINKS" ]; then export PIP_FIND_LINKS="$TORCH_FIND_LINKS"; fi \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
# The constraint keeps the torch installed above: llm-compressor must not swap it.
# gguf: quantization.method gguf-* (not the K-quants: llama-cpp-python compiles llama.cpp).
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt \
        "$(echo /wheels/lorafuse-*.whl)[merger,quantize,gguf]" \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt "requests>=2.32.2" \
    && pip install --no-cache-dir --no-deps "llmcompressor==${LLMCOMPRESSOR_VERSION}" \
    && LLM_COMPRESSOR_LOG_LEVEL=ERROR python -c "import llmcompressor, compressed_tensors" \
    && rm -rf /wheels /tmp/constraints.txt
USER 10001:10001
ENTRYPOINT ["lorafuse"]
CMD ["--help"]
