"""The release registry: stages of pushed model versions, kept in ML Metadata.

Every pushed version is a ``candidate``; ``sightline models promote`` makes it ``canary``
then ``stable``; a replaced stable becomes ``retired``. Each change is an execution in
ML Metadata linked to the version's PushedModel, so the release history sits in the same
lineage graph as the data and the training run, and a version's stage is derived from
that history, never stored beside it.

Modules: ``store`` (ML Metadata types and records), ``rules`` (what a promotion needs,
every broken rule named), ``serving_config`` (the TF Serving ``models.config`` the
registry writes), ``registry`` (reads, checks and records under one lock), ``compare``
(two versions' answers from request logs), ``card`` (the model card).
"""
