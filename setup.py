"""Sightline: a TFX pipeline from labelled COCO images to a served object detector."""

from setuptools import find_packages, setup

# The top-level folders are the packages, like the TFX templates (ARCHITECTURE.md §1).
PACKAGES = ["components", "data", "pipelines", "schemas", "serving", "trainer"]

setup(
    name="sightline",
    version="0.1.0",
    description="Object detection from COCO images to TF Serving, orchestrated as a TFX DAG",
    python_requires=">=3.9",
    packages=find_packages(include=[q for p in PACKAGES for q in (p, f"{p}.*")]),
    package_data={"schemas": ["*.pbtxt"]},
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tf-keras",
        "tensorflow-model-optimization",
        "pycocotools",
        "ai-edge-litert",  # the TFLite runtime for serving/tflite_runner.py
        "pillow",
        "matplotlib",
        "click",
        "rich",
        "tqdm",
        # sightline serve (serving/): TF Serving's protos over gRPC, REST as a small ASGI app
        "tensorflow-serving-api",
        "grpcio",
        "starlette",
        "uvicorn",
        "httptools",  # uvicorn's C HTTP parser and event loop: under overload the loop sheds
        "uvloop",  # requests several times faster than with h11 and asyncio's own loop
        "prometheus-client",
        "google-crc32c",  # request-log TFRecord framing without TensorFlow
        "psutil",  # whether a run recorded in a shared ML Metadata store still runs
        "faiss-cpu",  # the crop-embedding index of sightline similar / select
    ],
    extras_require={"test": ["pytest", "ruff", "nbclient", "nbformat", "ipykernel"]},
    entry_points={"console_scripts": ["sightline = pipelines.cli:main"]},
)
