"""Offline proofs of the deployment recipe: Dockerfiles, kustomize overlays, autoscaling rules.

No cluster and no Docker engine run here, so the proofs are: the real renderer (`kubectl kustomize`),
the real schema validator (`kubernetes-validate --strict`), the real Dockerfile linter (hadolint),
cross-object consistency checks against the server's own settings and metrics, and the image's
Python install performed for real in a clean virtual environment.
"""
