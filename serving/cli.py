"""``sightline serve``: a TF-Serving-compatible server for the pushed detector.

    sightline serve                                   # latest pushed model of the home
    sightline serve --model_name=det --model_base_path=/models/det --enable_batching
    sightline serve --model_config_file=models.config --model_config_file_poll_wait_seconds=60
    sightline serve --backend tflite                  # the edge bundle, through TFLite
    sightline serve --model_config_file=<home>/serving/models.config \
        --model_config_file_poll_wait_seconds=2 --shadow_fraction=0.1   # the release registry's
    python -m serving --help

Flag names and defaults are tensorflow_model_server's where they exist, so the same
command line, model directory and configuration files work with either server.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import click

_BOOL = {"is_flag": False, "flag_value": "true", "type": click.BOOL}  # --f or --f=true


def _configure_logging(verbose: bool) -> None:
    """The server's own lines on the console; TF/absl noise only with --verbose."""
    if not verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    ours = logging.getLogger("sightline.serving")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    if not verbose:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _default_base_path(home: str | None, backend: str) -> str:
    from pipelines.configs import Paths, home_dir

    paths = Paths(home_dir(home), "sightline")
    return paths.edge_bundle_dir if backend == "tflite" else paths.serving_model_dir


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", default=8500, show_default=True,
              help="gRPC port (PredictionService, ModelService); 0 picks a free port.")
@click.option("--rest_api_port", default=8501, show_default=True,
              help="REST port (TF Serving's /v1/models API and Prometheus metrics); "
                   "-1 disables REST. (TF Serving's default 0 disables it; here 0 picks a "
                   "free port.)")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--model_name", default=None,
              help='Model name in URLs and ModelSpecs (default "sightline" for the home\'s '
                   'model, else "default" like TF Serving).')
@click.option("--model_base_path", default=None,
              help="Directory of numbered versions (default: the home's pushed model, or its "
                   "edge bundles with --backend tflite).")
@click.option("--model_config_file", default=None,
              help="TF Serving ModelServerConfig text proto (several models, version "
                   "policy, version_labels, logging_config); overrides --model_name/base_path.")
@click.option("--model_config_file_poll_wait_seconds", default=0, show_default=True,
              help="Re-read --model_config_file this often; 0 reads it once.")
@click.option("--file_system_poll_wait_seconds", default=1, show_default=True,
              help="Look for new versions this often; 0 loads once at start.")
@click.option("--enable_batching", default=False, show_default=True, **_BOOL,
              help="Batch concurrent requests (TF Serving's SharedBatchScheduler semantics).")
@click.option("--batching_parameters_file", default=None,
              help="TF Serving BatchingParameters text proto (max_batch_size, "
                   "batch_timeout_micros, max_enqueued_batches, num_batch_threads, "
                   "allowed_batch_sizes).")
@click.option("--rest_api_timeout_in_ms", default=30000, show_default=True,
              help="REST deadline; a request still queued past it gets 504.")
@click.option("--rest_api_max_body_bytes", default=32 << 20, show_default=True,
              help="Largest REST request body; larger ones get 413.")
@click.option("--grpc_max_threads", default=64, show_default=True,
              help="gRPC handler threads (4x that many RPCs may be pending).")
@click.option("--max_in_flight", default=4 * (os.cpu_count() or 1), show_default=True,
              help="Without batching: requests per model version running or waiting; "
                   "more get 503 / UNAVAILABLE.")
@click.option("--backend", type=click.Choice(["savedmodel", "tflite"]), default="savedmodel",
              show_default=True, help="savedmodel: TensorFlow; tflite: edge bundle versions "
                                      "(model.tflite) through the TFLite runtime.")
@click.option("--home", default=None, help="Sightline home (default $SIGHTLINE_HOME or "
                                           "./.sightline).")
@click.option("--request_log_dir", default=None,
              help="Write sampled requests as PredictionLog TFRecords here (single-model "
                   "flags; a config file uses each model's logging_config).")
@click.option("--request_log_sampling_rate", default=0.0, show_default=True,
              help="Fraction of answered requests to log, in [0, 1].")
@click.option("--request_log_max_bytes", default=64 << 20, show_default=True,
              help="Start a new log file before one would pass this size.")
@click.option("--request_log_include_images", default=False, show_default=True, **_BOOL,
              help="Keep raw image bytes in request logs (default: SHA-256 and size only).")
@click.option("--canary_fraction", default=0.0, show_default=True,
              help="Share of requests naming no version or label that the 'canary' label's "
                   "version answers (others go to 'stable', or the latest version).")
@click.option("--shadow_fraction", default=0.0, show_default=True,
              help="Share of 'stable' traffic also run on 'canary' after answering; the copy "
                   "is logged (always, with the original) and never returned.")
@click.option("--shadow_max_in_flight", default=4, show_default=True,
              help="Shadow requests running or queued per model; more are dropped.")
@click.option("--verbose", is_flag=True, help="Show TensorFlow/absl logs too.")
def serve(port, rest_api_port, host, model_name, model_base_path, model_config_file,
          model_config_file_poll_wait_seconds, file_system_poll_wait_seconds, enable_batching,
          batching_parameters_file, rest_api_timeout_in_ms, rest_api_max_body_bytes,
          grpc_max_threads, max_in_flight, backend, home, request_log_dir,
          request_log_sampling_rate, request_log_max_bytes, request_log_include_images,
          canary_fraction, shadow_fraction, shadow_max_in_flight, verbose) -> None:
    """Serve the detector over TF Serving's REST and gRPC APIs."""
    _configure_logging(verbose)
    from serving import model_config
    from serving.server import ServerOptions

    if batching_parameters_file and not enable_batching:
        raise click.UsageError("--batching_parameters_file is set without --enable_batching "
                               "(TF Serving refuses this too)")
    for hint, value in (("--request_log_sampling_rate", request_log_sampling_rate),
                        ("--canary_fraction", canary_fraction),
                        ("--shadow_fraction", shadow_fraction)):
        if not 0.0 <= value <= 1.0:
            raise click.BadParameter("must be in [0, 1]", param_hint=hint)
    if shadow_max_in_flight < 1:
        raise click.BadParameter("must be >= 1", param_hint="--shadow_max_in_flight")
    try:
        batching = None
        if enable_batching:
            batching = (model_config.read_batching_parameters(batching_parameters_file)
                        if batching_parameters_file else model_config.BatchingConfig())
        if model_config_file:
            models = model_config.read_model_server_config(
                model_config_file, request_log_max_bytes, request_log_include_images)
        else:
            models = [_single_model(model_name, model_base_path, home, backend,
                                    request_log_dir, request_log_sampling_rate,
                                    request_log_max_bytes, request_log_include_images)]
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    _run_until_signalled(ServerOptions(
        models=models, host=host, grpc_port=port, rest_port=rest_api_port, backend=backend,
        batching=batching, model_config_file=model_config_file,
        model_config_poll_seconds=model_config_file_poll_wait_seconds,
        file_system_poll_seconds=file_system_poll_wait_seconds,
        rest_timeout_ms=rest_api_timeout_in_ms, rest_max_body_bytes=rest_api_max_body_bytes,
        grpc_max_threads=grpc_max_threads, max_in_flight=max_in_flight,
        request_log_max_bytes=request_log_max_bytes,
        request_log_include_images=request_log_include_images,
        canary_fraction=canary_fraction, shadow_fraction=shadow_fraction,
        shadow_max_in_flight=shadow_max_in_flight))


def _single_model(model_name: str | None, model_base_path: str | None, home: str | None,
                  backend: str, log_dir: str | None, sampling_rate: float, max_bytes: int,
                  include_images: bool):
    """The one model of --model_name / --model_base_path (default: the home's model)."""
    from serving import model_config

    name = model_name or ("default" if model_base_path else "sightline")
    base = os.path.abspath(model_base_path or _default_base_path(home, backend))
    if not os.path.isdir(base):
        hint = ("push one with `make run` / `sightline run`, or pass --model_base_path"
                if not model_base_path else "check --model_base_path")
        raise click.ClickException(f"no model directory at {base}: {hint}")
    logging_settings = None
    if log_dir and sampling_rate > 0:
        logging_settings = model_config.LoggingSettings(
            os.path.join(os.path.abspath(log_dir), name), sampling_rate, max_bytes,
            include_images)
    return model_config.ModelSettings(model_config.check_model_name(name), base,
                                      logging=logging_settings)


def _run_until_signalled(options) -> None:
    """Starts the server, serves until SIGTERM/SIGINT, then stops it gracefully."""
    from serving.errors import ServingError
    from serving.server import Server
    from serving.versions import disk_versions

    log = logging.getLogger("sightline.serving")
    for m in options.models:
        if not disk_versions(m.base_path):
            log.warning("No versions of model %s under %s yet; waiting for one", m.name,
                        m.base_path)
    server = Server(options)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except (OSError, ServingError) as e:
        server.stop()
        raise click.ClickException(f"cannot start: {e}") from None
    log.info("Ready (backend %s, batching %s); SIGTERM or Ctrl-C stops", options.backend,
             "on" if options.batching else "off")
    while not stop.wait(0.5):
        pass
    server.stop()
