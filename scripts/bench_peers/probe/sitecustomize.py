"""Installs the ``--profile`` timing probes in every Python process started with this folder on
``PYTHONPATH`` (the bench puts it there for a profile run only)."""

from bench_peers import probe_hooks

probe_hooks.install()
