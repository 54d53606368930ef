"""hpo: hyperparameter search for fine-tuning causal language models.

The operations are importable for notebooks; heavy libraries load only when used::

    from hpo import create_study, run_study, export_best
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["create_study", "run_study", "show_study", "list_studies", "delete_study", "export_best"]


def __getattr__(name: str) -> Any:
    if name in ("create_study", "run_study", "show_study", "list_studies", "delete_study"):
        from hpo import study

        return getattr(study, name)
    if name == "export_best":
        from hpo.export import export_best

        return export_best
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
