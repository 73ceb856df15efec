"""Tests of the deployment files: prefect.yaml and ray_cluster.yaml."""
