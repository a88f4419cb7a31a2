"""aion's local infrastructure, started from the package registries' builds.

Each component (Kafka, Postgres, MinIO, the Kubernetes control plane with kwok
GPU node pools) is a `Component`: it builds once into the cache, starts its
processes detached with their logs under one folder, answers a readiness probe,
and is reused by a second `up`. `python -m aion.infra` is the command line;
`aion.infra.pytest_plugin` gives tests the same components as fixtures.
"""
