# The tfxops image: one image for every place tfxops code runs off this machine.
#   - Kubeflow / Vertex AI tasks: `tfxops compile --image IMAGE` (each task's command
#     overrides the entrypoint);
#   - Beam SDK workers: Beam's own SDK image underneath, so its entrypoint (/opt/apache/beam/boot)
#     starts a worker (`--environment_type=DOCKER --environment_config=IMAGE`, or with
#     `--worker_pool` an EXTERNAL worker pool for `tfxops run --runner portable`);
#     `--sdk_container_image=IMAGE` for Dataflow;
#   - docker-compose.yml's proxy and monitor, deploy/k8s/ (their `command` runs tfxops).
# Build from the repository root: docker compose build, or docker build -t tfxops:latest .
FROM apache/beam_python3.10_sdk:2.59.0

# core/env.py image_environment(): what every tfxops process needs before TensorFlow is
# imported, here for processes that are not children of a tfxops command (Beam workers,
# pipeline tasks). tests/code/test_images.py keeps the two equal.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    PYTHONWARNINGS=ignore::FutureWarning

# The project at /app (pipeline/compile.py IMAGE_PROJECT_ROOT: schema/ and the model code).
WORKDIR /app

# pip, setuptools and wheel, then every dependency at the version the locks pin, each file
# checked against the SHA-256 the lock gives (hash-checking mode: make lock writes them), in a
# layer of its own: rebuilt only when a lock changes, not with every change to the code. The
# locks' sdists and the project build with the pinned setuptools (no build isolation, whose
# build dependencies would arrive unhashed).
COPY requirements-bootstrap.txt constraints.txt ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-bootstrap.txt \
 && pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation -r constraints.txt \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin tfxops

# Then the code (.dockerignore keeps out .venv, outputs, .git, caches, tests): a change to it
# reruns only this layer, the editable install of the project itself (seconds, no dependency).
COPY . ./
RUN pip install --no-cache-dir --no-build-isolation --no-deps -e .

# Every process of the image runs as user tfxops (uid 1000, as deploy/k8s/ runs it): the code and
# the installed packages belong to root and cannot be changed by what runs here. Mounted
# directories it writes (request logs, outputs) must be writable by uid 1000
# (docker-compose.yml: TFXOPS_UID / TFXOPS_GID for another host user).
USER 1000:1000
