"""The visual layer: plotly study report and optuna-dashboard helpers (reads studies through hpo)."""
