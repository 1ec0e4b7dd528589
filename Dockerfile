# slidemap: the main job (demo region -> prepare -> train -> map -> serve + dashboard).
#
#   docker build -t slidemap .                                   # CPU TensorFlow (tensorflow-cpu)
#   docker run --rm -p 8000:8000 -p 8501:8501 slidemap
#
#   docker build --build-arg SLIDEMAP_TF=gpu -t slidemap:gpu .   # GPU TensorFlow (tensorflow[and-cuda])
#   docker run --rm --gpus all -p 8000:8000 -p 8501:8501 slidemap:gpu
#
# The GPU image holds no tensorflow-cpu; CUDA and cuDNN come as pip wheels, so the plain Python base
# image is enough and only the host's NVIDIA driver (NVIDIA Container Toolkit, `--gpus all`) is needed.
# `slidemap status --json` (key `device`) says which device TensorFlow actually uses.
FROM python:3.11-slim-bookworm
ARG SLIDEMAP_TF=cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DEMO_DIR=/data/demo/region \
    PORT=8000 \
    DASHBOARD_PORT=8501

RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached layer), pinned by constraints.txt.
COPY pyproject.toml constraints.txt constraints-cpu.txt constraints-gpu.txt README.md ./
COPY slidemap/ slidemap/
COPY compute/ compute/
COPY training/ training/
COPY server/ server/
COPY dashboard/ dashboard/
COPY scripts/ scripts/
COPY models/ models/
RUN SLIDEMAP_TF="$SLIDEMAP_TF" bash scripts/setup.sh

# The server and dashboard bind to loopback by default; inside a container they must listen
# on all interfaces for the published ports to reach them.
EXPOSE 8000 8501
VOLUME ["/data"]
CMD ["bash", "-c", "BIND_HOST=0.0.0.0 bash scripts/demo.sh && tail -f /data/demo/serve.log /data/demo/dashboard.log"]
