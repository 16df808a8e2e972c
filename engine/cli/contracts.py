"""`settle contracts build|check`: the checked-in artifacts against the Solidity sources."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from engine.chain.contracts import compiler
from engine.cli.options import group
from engine.cli.render import escape, show

app = group("Compile the Solidity contracts.")


@app.command("build")
def build() -> None:
    """Recompile contracts/ and write the checked-in artifacts."""
    raise typer.Exit(cmd_build())


@app.command("check")
def check() -> None:
    """Exit 1 if the checked-in artifacts differ from what the sources compile to."""
    raise typer.Exit(cmd_check())


def cmd_build() -> int:
    report = compiler.build()
    for warning in report.warnings:
        show(f"[yellow]{escape(warning.rstrip())}[/yellow]")
    for change in report.changes:
        verb = "removed" if change.kind == "stale" else "wrote"
        show(f"{verb} {escape(_shown(report.artifacts_dir / change.file_name))}")
    show(
        f"[green]{report.artifact_count} artifacts up to date[/green] "
        f"in {escape(_shown(report.artifacts_dir))} ({len(report.changes)} changed)"
    )
    return 0


def cmd_check() -> int:
    """0 if the artifacts match the sources, 1 (drift) if not."""
    report = compiler.build(write=False)
    if report.warnings:
        show(
            f"[yellow]compiler warnings: {len(report.warnings)}[/yellow] "
            "(`settle contracts build` shows them)"
        )
    if not report.changes:
        show(f"[green]{report.artifact_count} artifacts match the sources[/green]")
        return 0
    for change in report.changes:
        show(f"[red]{escape(change.describe())}[/red]")
    show(
        f"artifacts in {escape(_shown(report.artifacts_dir))} do not match the sources: "
        "run `settle contracts build` and commit the result"
    )
    return 1


def _shown(path: Path) -> str:
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
