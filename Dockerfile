# thinkrec image. CPU by default; the GPU variant swaps in faiss-gpu (the torch wheel from the
# package index already carries CUDA on Linux, and the container runtime supplies the driver).
#
#   docker build -t thinkrec .                                  # CPU
#   docker build -t thinkrec:gpu --build-arg VARIANT=gpu .      # NVIDIA GPU
#   docker run -p 7860:7860 -v thinkrec-artifacts:/work/artifacts -v thinkrec-cache:/cache thinkrec
#
# For a small CPU image pass a CPU-only torch wheel index: --build-arg TORCH_INDEX_URL=<url>.
# The container runs the README's first command: build the default dataset (and later the
# default model) unless cached in the volumes, then start the app.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    THINKREC_CACHE=/cache

WORKDIR /opt/thinkrec
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY training ./training
COPY data ./data

RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi \
 && pip install . \
 && if [ "$VARIANT" = "gpu" ]; then pip uninstall -y faiss-cpu && pip install "faiss-gpu>=1.12"; fi

WORKDIR /work
VOLUME ["/work/artifacts", "/cache"]
EXPOSE 7860
CMD ["thinkrec", "data", "build"]
