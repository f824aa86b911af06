# The Sightline pipeline image: every step of the compiled Kubeflow pipeline runs in it
# (TFX's kubeflow_v2_run_executor imports components.* and trainer.task.run_fn from here).
#
#   docker build -t REGISTRY/sightline:TAG . && docker push REGISTRY/sightline:TAG
#   sightline compile --kubeflow sightline.json --image REGISTRY/sightline:TAG \
#       --pipeline-root gs://BUCKET/root --data-root gs://BUCKET/data
#
# Installed exactly as `make install` does (pip 24.3.1, the complete pin set in
# constraints.txt, --ignore-requires-python because the tfx wheel declares <3.11), and
# editable in /opt/sightline so that kubeflow_runner.IMAGE_SETUP_FILE exists for Beam.
FROM python:3.11.7-slim-bookworm

# tfmot (QAT) and TFMA need Keras 2; component processes start in TFX's entrypoint, not
# in `sightline`, so the image sets what pipelines/cli sets for a local run.
ENV TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/sightline
RUN pip install -q --upgrade pip==24.3.1

COPY setup.py pyproject.toml constraints.txt ./
COPY components ./components
COPY data ./data
COPY pipelines ./pipelines
COPY schemas ./schemas
COPY serving ./serving
COPY trainer ./trainer
RUN pip install --ignore-requires-python -c constraints.txt -e . \
    && python -c "import trainer.task, components.coco_eval.metric, pipelines.cli"

# Beam's worker boot program (its version pinned like apache-beam in constraints.txt), so
# the same image runs Beam workers on Dataflow, Flink and Spark (--sdk_container_image);
# Kubeflow steps set their own command and never start it.
COPY --from=apache/beam_python3.11_sdk:2.59.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
