"""`factory iam-policy`: the IAM policy documents each command needs (factory.iam)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from factory.cli.app import app
from factory.cli.common import handle_errors, print_json


@app.command("iam-policy")
@handle_errors
def iam_policy(
    purpose: str = typer.Option(
        "all", "--for",
        help="bake | register | prune | status | rollback | all; instance (the instance role, for storage.grow); "
             "key-policy (statements for a customer-managed KMS key's own policy).",
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Settings file (default: ./factory.yaml when present): fits bake to its builder: section "
                               "(instance profile, session_manager, kms_key), and sts:AssumeRole to its distribute.copy_to roles."),
    specs_dir: Path = typer.Option(
        Path("specs"), "--specs-dir", help="Specs folder: the copy_to roles a spec's own distribute: names are added (when it exists)."),
    ebs_kms_key: Optional[str] = typer.Option(
        None, "--ebs-kms-key", help="The account's default EBS key, when it is customer managed (key id, ARN or alias/NAME): "
                                    "the instance role's grow volumes are encrypted with it."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON only: one policy document, or {purpose: document} for all."),
) -> None:
    """Print least-privilege IAM policies: exactly the actions factory and Packer call."""
    from factory import iam, kms_policy
    from factory.config import load_config
    from factory.errors import UsageError

    settings = load_config(config)
    builder = settings.builder
    # The roles copy_to names: known only from a settings file (no file: any role, iam.WIDE).
    copy_roles = None
    if settings.path is not None:
        from factory.spec import load_specs

        copy_roles = iam.copy_roles_of(settings, load_specs([specs_dir]) if specs_dir.is_dir() else ())
    if purpose == "instance":  # not the caller's: the role of instances whose grow agent adds volumes
        from factory.grow import instance_policy

        doc = instance_policy()
        if ebs_kms_key:
            doc = dict(doc, Statement=doc["Statement"] + kms_policy.use_statements(ebs_kms_key, "FactoryGrowEbsKmsKey"))
        if json_out:
            print_json(doc)
            return
        print("# instance: the grow agent on instances of a task with storage.grow; attach it to the")
        print("# instance role factory.yaml names (batch.instance_role), e.g. aws iam put-role-policy")
        if not ebs_kms_key:
            print("# (a customer-managed default EBS key? add --ebs-kms-key KEY for its kms: statements)")
        print(json.dumps(doc, indent=2))
        return
    if purpose == "key-policy":
        keys = {k: why for k, why in ((builder.kms_key, "builder.kms_key"), (ebs_kms_key, "--ebs-kms-key")) if k}
        if not keys:
            raise UsageError("--for key-policy needs a customer-managed key: builder.kms_key in factory.yaml (--config) or --ebs-kms-key KEY")
        docs = {k: kms_policy.key_policy_statements(k) for k in keys}
        if json_out:
            print_json(docs)
            return
        for key, statements in docs.items():
            print(f"# {key} ({keys[key]}): add these statements to the key's policy, so the roles that launch")
            print("# Batch's instances (EC2 Auto Scaling, EC2 Fleet, Spot Fleet) can use what it encrypts")
            print(json.dumps(statements, indent=2))
        return
    chosen = iam.PURPOSES if purpose == "all" else (purpose,)
    if purpose != "all" and purpose not in iam.PURPOSES:
        raise UsageError(f"--for must be one of {', '.join(iam.PURPOSES)}, all, instance, key-policy; not {purpose!r}")
    if json_out:
        print_json(iam.policy(chosen[0], builder, copy_roles) if len(chosen) == 1
                   else {p: iam.policy(p, builder, copy_roles) for p in chosen})
        return
    for p in chosen:
        commands = ", ".join(sorted(c for c, ps in iam.COMMAND_PURPOSES.items() if p in ps))
        print(f"# {p}: needed by factory {commands}")
        print(json.dumps(iam.policy(p, builder, copy_roles), indent=2))
    implied = [f"#   {a}: {why}" for a, why in sorted(iam.IMPLIED.items()) if any(a in iam.actions(p, builder, copy_roles) for p in chosen)]
    if implied:
        print("# allowed though factory never calls them itself:")
        print("\n".join(implied))
    wide = [f"#   {p} {a}: {why}" for p in chosen for a, why in sorted(iam.wide(p, copy_roles).items())]
    if wide:
        print("# on every resource (`*`), and why IAM cannot be told more:")
        print("\n".join(wide))
    if "bake" in chosen and builder.kms_key:
        print(f"# builder.kms_key {builder.kms_key}: its own key policy needs statements too: factory iam-policy --for key-policy")
