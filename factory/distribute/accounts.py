"""Another account's clients, by assuming the role `copy_to` names (sts:AssumeRole), for
the copies that account owns (EC2 Image Builder's `targetAccountIds`: the target account
owns its copy, unlike launch permissions, where the owner keeps it).

The credentials live in memory, in the Clients they make, for the run: never written
anywhere. On the local cloud, moto's server answers AssumeRole with keys it then maps to
the role's account (moto's `get_account_id_from`), so the same calls reach a second account."""

from __future__ import annotations

from typing import Callable

from factory.aws import Clients, aws_errors

SESSION_NAME = "factory-distribute"


def assumed(clients: Clients, role: str, account: str) -> Callable[[str], Clients]:
    """clients_for(region) in the role's account, the role assumed once with `clients`."""
    with aws_errors(f"assuming {role} to copy into account {account} (distribute.copy_to)"):
        answer = clients.client("sts").assume_role(RoleArn=role, RoleSessionName=SESSION_NAME)
    credentials = answer["Credentials"]
    made: dict[str, Clients] = {}

    def clients_for(region: str) -> Clients:
        if region not in made:
            made[region] = Clients(region=region, endpoint_url=clients.endpoint_url, agent=clients.agent, credentials=credentials)
        return made[region]

    return clients_for
