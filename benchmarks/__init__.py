"""Benchmarks: pycontain against crun, runc, podman and bubblewrap (see README.md)."""
