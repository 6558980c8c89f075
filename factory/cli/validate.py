"""`factory validate [PATH ...]`: check specs against the schema and semantic rules."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, handle_errors, print_json


@app.command()
@handle_errors
def validate(
    paths: Optional[List[Path]] = typer.Argument(None, help="Spec files or folders (default: specs/)."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable report."),
) -> None:
    """Check task specs: schema, file names, benchmark files, limits. Reports every error."""
    from factory.spec import validate_paths

    report = validate_paths(paths or [DEFAULT_SPECS_DIR])
    if json_output:
        print_json(report.to_json())
    else:
        for result in report.results:
            for problem in result.problems:
                print(problem)
        n_bad = sum(not r.valid for r in report.results)
        n = len(report.results)
        summary = f"{n - n_bad} of {n} spec(s) valid" + (f", {len(report.problems)} error(s)" if n_bad else "")
        print(summary)
    if not report.valid:
        raise typer.Exit(1)
