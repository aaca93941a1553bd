# thinkrec image. CPU by default; the GPU variant swaps in faiss-gpu and adds the vLLM server
# environment that `thinkrec serve-model` uses (the torch wheel from the package index already
# carries CUDA on Linux, and the container runtime supplies the driver).
#
#   docker build -t thinkrec .                                  # CPU
#   docker build -t thinkrec:gpu --build-arg VARIANT=gpu .      # NVIDIA GPU, with vLLM
#   docker run -p 7860:7860 -v thinkrec-artifacts:/work/artifacts -v thinkrec-checkpoints:/work/checkpoints \
#       -v thinkrec-cache:/cache thinkrec
#
# GPU serving: one container runs the model server, the app talks to it.
#   docker run --gpus all -p 8000:8000 -v thinkrec-artifacts:/work/artifacts -v thinkrec-checkpoints:/work/checkpoints \
#       thinkrec:gpu thinkrec serve-model --host 0.0.0.0 --port 8000
#   docker run -p 7860:7860 ... thinkrec:gpu thinkrec app --host 0.0.0.0 --backend vllm --model-url http://HOST:8000
#
# For a small CPU image pass a CPU-only torch wheel index: --build-arg TORCH_INDEX_URL=<url>.
# The default command is the README's first one: build the default dataset and model unless cached
# in the volumes, then start the app.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    THINKREC_CACHE=/cache \
    THINKREC_VLLM_VENV=/opt/vllm-venv

WORKDIR /opt/thinkrec
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY training ./training
COPY data ./data

# Editable: serve-model installs this same source tree (without dependencies) into the vLLM
# environment so vLLM finds the SID trie's logits processor entry point.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; fi \
 && pip install -e . \
 && if [ "$VARIANT" = "gpu" ]; then \
      pip uninstall -y faiss-cpu && pip install "faiss-gpu>=1.12" \
      && thinkrec serve-model --install-only --device cuda; \
    fi

WORKDIR /work
VOLUME ["/work/artifacts", "/work/checkpoints", "/cache"]
EXPOSE 7860 8000
CMD ["thinkrec", "app", "--host", "0.0.0.0"]
