"""`factory iam-policy`: the IAM policy documents each command needs (factory.iam)."""

from __future__ import annotations

import json

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors, print_json


@app.command("iam-policy")
@handle_errors
def iam_policy(
    purpose: str = typer.Option("all", "--for", help="bake | register | prune | status | rollback | all; or instance (the instance role, for storage.grow)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON only: one policy document, or {purpose: document} for all."),
) -> None:
    """Print least-privilege IAM policies: exactly the actions factory and Packer call."""
    from factory import iam
    from factory.errors import UsageError

    if purpose == "instance":  # not the caller's: the role of instances whose grow agent adds volumes
        from factory.grow import instance_policy

        if json_out:
            print_json(instance_policy())
            return
        print("# instance: the grow agent on instances of a task with storage.grow; attach it to the")
        print("# instance role factory.yaml names (batch.instance_role), e.g. aws iam put-role-policy")
        print(json.dumps(instance_policy(), indent=2))
        return
    chosen = iam.PURPOSES if purpose == "all" else (purpose,)
    if purpose != "all" and purpose not in iam.PURPOSES:
        raise UsageError(f"--for must be one of {', '.join(iam.PURPOSES)}, all, instance; not {purpose!r}")
    if json_out:
        print_json(iam.policy(chosen[0]) if len(chosen) == 1 else {p: iam.policy(p) for p in chosen})
        return
    for p in chosen:
        commands = ", ".join(sorted(c for c, ps in iam.COMMAND_PURPOSES.items() if p in ps))
        print(f"# {p}: needed by factory {commands}")
        print(json.dumps(iam.policy(p), indent=2))
    implied = [f"#   {a}: {why}" for a, why in sorted(iam.IMPLIED.items()) if any(a in iam.actions(p) for p in chosen)]
    if implied:
        print("# allowed though factory never calls them itself:")
        print("\n".join(implied))
