"""The compiled Kubeflow package: checked strictly, and the files a person submits.

TFX's KubeflowV2DagRunner writes a Vertex AI ``PipelineJob`` (the pipeline spec wrapped
with a runtime config). The KFP client and UI take a ``PipelineSpec`` YAML instead, so the
spec is also written alone beside it, with a note saying how to submit either. Both are
parsed with unknown fields rejected first: a spec the backend would refuse fails here, at
compile time, not on the cluster.
"""

from __future__ import annotations

import json
import os

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

_NOTE = """\
# Submitting {name}

Compiled by `sightline compile` for the image `{image}` with the pipeline root
`{root}`. The image must be built from this repository's `Dockerfile` and pushed, and the
pipeline root and data root must be readable and writable by every step.

| file | what | for |
|---|---|---|
| `{json_name}` | a `PipelineJob`: the spec plus its runtime config | Vertex AI Pipelines |
| `{yaml_name}` | the `PipelineSpec` alone | the KFP client and UI (`.yaml` packages) |

Kubeflow Pipelines (v2 backend), once, and every hour on the hour (KFP's cron has six
fields, seconds first; `max_concurrency=1` keeps two runs from overlapping). Each run
ingests the latest span; one over a span already processed runs again (steps whose
inputs did not change are reused when compiled with `--set enable_cache=true`):

```python
import kfp

client = kfp.Client(host="https://YOUR-KFP-ENDPOINT")
client.create_run_from_pipeline_package("{yaml_path}", pipeline_root="{root}",
                                        experiment_name="{name}")
experiment = client.create_experiment("{name}")
client.create_recurring_run(experiment.experiment_id, "{name}-hourly",
                            cron_expression="0 0 * * * *", max_concurrency=1,
                            no_catchup=True, pipeline_package_path="{yaml_path}",
                            pipeline_root="{root}")
```

Vertex AI Pipelines:

```python
from google.cloud import aiplatform

aiplatform.PipelineJob(display_name="{name}", template_path="{json_path}").submit()
```

ML Metadata is the cluster's own there (KFP's or Vertex ML Metadata), not a Sightline
home's: `sightline runs` and `lineage` read a home's store only.
"""


def check(job_path: str) -> pipeline_spec_pb2.PipelineSpec:
    """The compiled file parsed strictly as a PipelineJob and its spec as a PipelineSpec.

    Raises:
      google.protobuf.json_format.ParseError: a field the schema does not know, or a
        value of the wrong type (naming the field).
    """
    with open(job_path) as f:
        text = f.read()
    json_format.Parse(text, pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
    return json_format.ParseDict(json.loads(text)["pipelineSpec"],
                                 pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)


def write_companions(job_path: str, image: str, pipeline_root: str) -> tuple[str, str]:
    """Writes ``<stem>.yaml`` (the spec alone) and ``<stem>.submit.md`` beside the job.

    Returns:
      The paths of the YAML spec and of the note.
    """
    spec = check(job_path)
    stem = os.path.splitext(job_path)[0]
    yaml_path, note_path = f"{stem}.yaml", f"{stem}.submit.md"
    with open(yaml_path, "w") as f:
        yaml.safe_dump(json_format.MessageToDict(spec), f, sort_keys=True)
    with open(note_path, "w") as f:
        f.write(_NOTE.format(
            name=spec.pipeline_info.name, image=image, root=pipeline_root,
            json_name=os.path.basename(job_path), yaml_name=os.path.basename(yaml_path),
            json_path=job_path, yaml_path=yaml_path))
    return yaml_path, note_path
