"""`factory instance-storage`: each instance type's NVMe instance store, and its refresh.

    factory instance-storage r6id.2xlarge m6id     the stores factory knows (a family: every size)
    factory instance-storage --refresh [--region R] [--cloud aws|local]
                                                   rewrite schemas/instance-storage.json from DescribeInstanceTypes

Thin over factory.instance_store.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors, print_json, stdout_console
from factory.errors import UsageError


@app.command("instance-storage")
@handle_errors
def instance_storage(
    types: Optional[List[str]] = typer.Argument(None, help="Instance types or families to show (e.g. r6id.2xlarge m6id)."),
    refresh: bool = typer.Option(False, "--refresh", help="Read every instance type of --region from AWS (DescribeInstanceTypes) and rewrite the table."),
    region: str = typer.Option("us-east-1", "--region", help="With --refresh: the region to read."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --refresh: write the table here instead of factory's own schemas/instance-storage.json."),
    cloud: str = typer.Option("aws", "--cloud", help="With --refresh: aws (your account) or local (the running local cloud)."),
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show the NVMe instance store of instance types (storage.instance_store), or refresh the table from AWS."""
    from factory import instance_store

    if refresh:
        if types:
            raise UsageError("--refresh reads every instance type; give no TYPES with it")
        from factory.cloud import Cloud

        summary = instance_store.refresh(Cloud.open(cloud).clients(region), region, out)
        if json_output:
            print_json(summary)
        else:
            stdout_console().print(
                f"{summary['file']}: {summary['types']} instance types of {region}, {summary['with_instance_store']} with "
                f"instance store; {len(summary['added'])} added, {len(summary['removed'])} removed, {len(summary['changed'])} changed",
                highlight=False, markup=False, soft_wrap=True)
        return
    if out is not None or cloud != "aws" or region != "us-east-1":
        raise UsageError("--out, --cloud and --region go with --refresh")
    table = instance_store.table()
    names: list[str] = []
    for t in types or []:
        members = [t] if "." in t else sorted((n for n in table if n.split(".")[0] == t), key=lambda n: (table[n].total_gb if table[n] else -1, n))
        if not members or ("." in t and t not in table):
            raise UsageError(f"{t}: not in factory's instance-store table; check the name or run `factory instance-storage --refresh`")
        names += members
    if not names:
        names = [n for n, s in table.items() if s is not None]
    rows = {n: (table[n].to_json() if table[n] else None) for n in names}
    if json_output:
        print_json(rows)
        return
    console = stdout_console()
    for n, s in rows.items():
        console.print(f"{n}: " + (table[n].describe() if s else "no instance store"), highlight=False, markup=False, soft_wrap=True)
