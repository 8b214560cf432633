"""The ``genconv`` command line.

Verbs: run, train, features, evaluate, specificity, sample, show, denoise, visualize, bench.
Errors a user can cause (:class:`genconv.errors.UserError`) print one line and exit with 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from genconv import __version__
from genconv.errors import UserError


def _parse_set(values):
    import tomllib
    out = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set layers.0.epochs=3")
        k, v = item.split("=", 1)
        try:
            out[k] = tomllib.loads(f"x = {v}")["x"]
        except tomllib.TOMLDecodeError:
            out[k] = v
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genconv")
def cli():
    """genconv: learn hierarchical convolutional representations from images and sound."""


@cli.command()
@click.argument("recipe")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder (default runs/RECIPE)")
@click.option("--quick", is_flag=True, help="smoke-test size: small data, few epochs")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a recipe setting")
@click.option("--resume", is_flag=True, help="continue a killed run in --out from its last checkpoint")
def run(recipe, out, quick, device, seed, sets, resume):
    """Run a named recipe (a reproducible experiment) end to end."""
    from genconv import recipes
    from genconv.device import resolve_device

    config = recipes.load_recipe(recipe, quick=quick, overrides=_parse_set(sets))
    config["recipe"]["resume"] = resume
    out = Path(out or f"runs/{recipe}{'-quick' if quick else ''}")
    fn = recipes.runner(config)
    fn(config, out, device=resolve_device(device), seed=seed, quick=quick)


@cli.group()
def train():
    """Train one model on a data set."""


def main(argv=None):
    # model families add their verbs here (import registers them on `cli` / `train`)
    from genconv import commands  # noqa: F401
    try:
        cli.main(args=argv, prog_name="genconv", standalone_mode=False)
    except UserError as e:
        click.echo(f"genconv: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("genconv: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("genconv: interrupted; the last checkpoint is kept, resume with --resume", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
