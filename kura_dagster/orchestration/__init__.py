"""Layer 5, the Dagster layer: the asset graph (``assets``), its checks, resources, jobs, schedules and sensors
(``automation``), partitions, code versions, the factory ``build_kura_defs`` and the ``KuraPipelineComponent``.

Everything below it (``types``, ``checkpoints``, ``io_managers``, ``pipeline``, ``sources``) works without it; the
standalone code location that wires it from the environment is ``kura_dagster.definitions``.
"""
