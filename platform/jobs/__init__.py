"""Ray Jobs: submit a job spec to a Ray cluster's job server and follow, list, stop jobs.

`spec.py` checks the job spec locally and writes the entrypoint, `runtime_env.py` packs this
repository (or takes a pinned image / pip set), `client.py` talks to the job server
(token auth from the environment)."""
