"""The `pyproxy` command line (click). Exit codes: 0 ok, 1 "different"/failed check, 2 error."""

from __future__ import annotations

import json
import os
import sys

import click
import yaml


def _print(data: object, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@click.group()
def main() -> None:
    """pyproxy: a Kubernetes Service dataplane (kube-proxy replacement)."""


# -- lab -------------------------------------------------------------------------------------------


@main.group()
def lab() -> None:
    """A cluster made of network namespaces on this machine."""


def _load_lab_spec(path: str | None) -> tuple[object, dict]:
    from .lab.spec import DEFAULT_SPEC, SpecError, parse_spec

    raw = DEFAULT_SPEC
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f)
    try:
        return parse_spec(raw), raw
    except SpecError as err:
        raise click.ClickException(f"{path or 'built-in lab'}: {err}") from None


@lab.command("up")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), help="lab YAML (default: built-in)")
def lab_up(path: str | None) -> None:
    """Create the lab's nodes, pods and external client."""
    from .lab import Lab, LabError

    spec, raw = _load_lab_spec(path)
    try:
        lab_ = Lab(spec).up(raw)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    _print_status(lab_.status())


def _print_status(status: dict) -> None:
    click.echo(f"lab {status['name']}")
    for node in status["nodes"]:
        click.echo(f"  node {node['name']:<10} {node['ip']:<15} pods {node['podCIDR']:<16} netns {node['netns']}")
    click.echo(f"  external        {status['external']['ip']:<15} {'':<21} netns {status['external']['netns']}")
    for pod in status["pods"]:
        state = "serving" if pod["echo"] else "NOT SERVING"
        click.echo(f"  pod  {pod['name']:<10} {pod['ip']:<15} on {pod['node']:<18} {state}")


@lab.command("down")
@click.option("--name", default="demo", show_default=True)
def lab_down(name: str) -> None:
    """Remove everything of a lab (also a half-built or crashed one)."""
    from .lab import Lab

    removed = Lab.down_by_name(name)
    click.echo(f"removed {len(removed)} namespaces of lab {name}")


@lab.command("status")
@click.option("--name", default="demo", show_default=True)
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text")
def lab_status(name: str, output: str) -> None:
    """Show nodes, pods and whether their echo servers run."""
    from .lab import Lab, LabError

    try:
        status = Lab.load(name).status()
    except LabError as err:
        raise click.ClickException(str(err)) from None
    if output == "text":
        _print_status(status)
    else:
        _print(status, output)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--name", default="demo", show_default=True)
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(name: str, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a pod, a node or "external": pyproxy lab exec web-1 -- ip addr"""
    from .lab import Lab, LabError

    try:
        ns = Lab.load(name).namespace_of(target)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


@lab.command("demo")
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), help="lab YAML (default: built-in)")
def lab_demo(path: str | None) -> None:
    """Bring a lab up, show traffic through it, and take it down again."""
    from .lab import Lab, LabError
    from .lab.demo import run_demo

    spec, raw = _load_lab_spec(path)
    try:
        lab_ = Lab(spec).up(raw)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    try:
        ok = run_demo(lab_, click.echo)
    finally:
        lab_.down()
    click.echo("lab removed")
    sys.exit(0 if ok else 1)
