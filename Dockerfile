# slidemap: the main job (demo region -> prepare -> train -> map -> serve + dashboard), CPU.
#
#   docker build -t slidemap .
#   docker run --rm -p 8000:8000 -p 8501:8501 slidemap
#
# GPU variant: build FROM tensorflow/tensorflow:2.21.0-gpu (Python 3.11/3.12), replace
# tensorflow-cpu by tensorflow[and-cuda] (`pip install -e .[gpu]` after
# `pip uninstall -y tensorflow-cpu`), and run with `--gpus all`. slidemap turns on GPU memory
# growth itself and batches inference on the GPU when TensorFlow sees one.
FROM python:3.11-slim-bookworm

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
COPY pyproject.toml constraints.txt README.md ./
COPY slidemap/ slidemap/
COPY compute/ compute/
COPY training/ training/
COPY server/ server/
COPY dashboard/ dashboard/
COPY scripts/ scripts/
COPY models/ models/
RUN bash scripts/setup.sh

# The server and dashboard bind to loopback by default; inside a container they must listen
# on all interfaces for the published ports to reach them.
EXPOSE 8000 8501
VOLUME ["/data"]
CMD ["bash", "-c", "BIND_HOST=0.0.0.0 bash scripts/demo.sh && tail -f /data/demo/serve.log /data/demo/dashboard.log"]
