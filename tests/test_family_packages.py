"""Amazon Linux's packages, not Debian's (issue 19 §2).

Every command a role, the grow agent or a boot unit runs on the instance comes from a
package the family's ECS-optimized AMI ships (schemas/family-packages.yaml), or one the
role installs first with the family's package manager, pinned. And the local build host,
made to look like the family's AMI, lacks a command until a role installs its package: a
grow_agent role that forgets lvm2 fails on an AL2023 build host."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from factory.families import FAMILIES
from factory.family_packages import command_packages, family_packages, provided
from tests.conftest import REPO

ROLES = REPO / "ansible" / "roles"
AGENT = ROLES / "grow_agent" / "files" / "factory_grow"
STORE_SCRIPT = ROLES / "instance_store" / "files" / "factory_instance_store.py"

# Run only where it cannot be missing, so no family needs its package:
CONDITIONAL = {
    "dpkg-query": "image_manifest lists packages with it only where rpm is missing (never on Amazon Linux)",
    "mkfs.btrfs": "the grow pool's btrfs backend: used only where btrfs-progs exists (BtrfsPool.available)",
    "btrfs": "the grow pool's btrfs backend: used only where btrfs-progs exists (BtrfsPool.available)",
    "journalctl": "generalize rotates the journal only where journald's socket exists, so systemd does (never on AL1's upstart)",
    "systemctl": "generalize signals journald only where journald's socket exists, so systemd does (never on AL1's upstart)",
}
# Commands named by a template: what each stands for.
TEMPLATED = {
    "ansible_facts['python']['executable']": None,  # the Python Ansible itself runs there
    "grow_agent_python": None,  # the Miniconda prefix's, installed by miniconda_awscli
    "miniconda_awscli_prefix": None,  # the prefix's own programs (installer, aws, conda)
    "image_manifest_awscli_prefix": None,
    "bake_check_prefix": None,
    "grow_agent_package_manager[grow_agent_family]": "package manager",
    "instance_store_package_manager[instance_store_family]": "package manager",
    "instance_store_python": None,  # the family's own python3 (every family's AMI has it)
}
_SHELL_WORDS = {"set", "for", "do", "done", "then", "else", "fi", "if", "command", "true", "false", "export", "cd",
                "echo", "printf", "test", "[", "exit"}


def _first(argv) -> str:
    """The program of a command task's argv: a literal, or the template expression naming it."""
    if isinstance(argv, list):
        head = str(argv[0])
    else:
        m = re.match(r"\s*\{\{\s*\[\s*'([^']+)'", str(argv))
        if m:
            return m.group(1)
        m = re.match(r"\s*\{\{\s*\[?\s*([A-Za-z_][\w\[\]'\.]*)", str(argv))
        assert m, argv
        return "{{" + m.group(1)
    m = re.match(r"\{\{\s*(.+?)(\s*\||\s*~|\s*\}\}|\s*\+)", head)
    return "{{" + m.group(1).strip() if m else head


def _shell_programs(cmd: str, variables: dict) -> list[str]:
    """The programs a shell task's script runs (first word of each pipeline part; xargs'
    program; a loop over a variable's list of commands, each looked up with `command -v`)."""
    out = []
    for part in re.split(r";|\|\||&&|\|", re.sub(r"\{\{.*?\}\}", "TEMPLATE", cmd)):
        words = [w for w in shlex.split(part) if not re.match(r"^\w+=", w)]
        while words and words[0] in ("do", "then", "else"):
            words = words[1:]
        if not words or words[0] in _SHELL_WORDS:  # a builtin or a keyword: nothing run
            continue
        out.append(words[0])
        if words[0] == "xargs":
            out.append(next(w for w in words[1:] if not w.startswith("-")))
    for name, value in variables.items():  # `for t in {{ wanted | join(' ') }}; do command -v "$t"`
        if isinstance(value, list) and re.search(r"\{\{\s*" + name + r"\b", cmd) and "command -v" in cmd:
            out += value
    return out


def _tasks(node, variables: dict):
    """Every task of a task list, with the vars in scope (blocks included)."""
    for task in node or []:
        scope = dict(variables, **(task.get("vars") or {}))
        for key in ("block", "rescue", "always"):
            if key in task:
                yield from _tasks(task[key], scope)
        yield task, scope


def role_commands(role: str) -> set[str]:
    """Every program the role's tasks, handlers and templates run, and for grow_agent what
    its agent package runs."""
    found: set[str] = set()
    files = sorted((ROLES / role).glob("tasks/*.yml")) + sorted((ROLES / role).glob("handlers/*.yml"))
    for path in files:
        for task, scope in _tasks(yaml.safe_load(path.read_text()), {}):
            for module in ("ansible.builtin.command", "command"):
                if module in task:
                    args = task[module]
                    program = (_first(args["argv"]) if isinstance(args, dict) and "argv" in args
                               else shlex.split(args if isinstance(args, str) else args["cmd"])[0])
                    while program.startswith("{{") and program[2:] in scope:  # a list the task's vars build
                        program = _first(scope[program[2:]])
                    found.add(program)
            for module in ("ansible.builtin.shell", "shell"):
                if module in task:
                    args = task[module]
                    found.update(_shell_programs(args if isinstance(args, str) else args["cmd"], scope))
    for path in sorted((ROLES / role).glob("templates/*.service.j2")):
        for line in path.read_text().splitlines():
            if line.startswith(("ExecStart=", "ExecStartPre=", "ExecStop=")):
                found.add(_first([re.match(r"\{\{.*?\}\}\S*|\S+", line.split("=", 1)[1]).group(0)]))
    if role == "grow_agent":
        found |= agent_commands()
    if role == "instance_store":
        found |= agent_commands([STORE_SCRIPT])
    return found


def agent_commands(paths: list[Path] | None = None) -> set[str]:
    """What the grow agent (or the instance-store boot script) runs: `run("x", ...)`,
    `subprocess.run(["x", ...])`, `shutil.which("x")`."""
    found = set()
    for path in paths or sorted(AGENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = ast.unparse(node.func)
            arg = node.args[0]
            if name in ("run", "shutil.which") and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            elif name.startswith("subprocess.") and isinstance(arg, ast.List) and isinstance(arg.elts[0], ast.Constant):
                found.add(arg.elts[0].value)
    return found


def roles_on(family: str) -> list[str]:
    """The roles a bake runs on `family` (grow_agent only where the family can grow)."""
    roles = sorted(p.name for p in ROLES.iterdir() if (p / "tasks" / "main.yml").exists())
    # instance_store is refused on devicemapper families (factory.spec), as grow_agent is.
    return [r for r in roles if r not in ("grow_agent", "instance_store") or FAMILIES[family].data_device]


def grow_defaults() -> dict:
    return yaml.safe_load((ROLES / "grow_agent" / "defaults" / "main.yml").read_text())


def store_defaults() -> dict:
    return yaml.safe_load((ROLES / "instance_store" / "defaults" / "main.yml").read_text())


def role_installs(role: str, family: str) -> set[str]:
    """The packages the role installs on `family` (names, versions stripped)."""
    if role not in ("grow_agent", "instance_store"):
        return set()
    pins = family_packages(family).pins
    out = set()
    wanted = grow_defaults()["grow_agent_packages"] if role == "grow_agent" else store_defaults()["instance_store_packages"]
    for spec in wanted.get(family, []):
        name = next((p for p in pins if spec == p or spec.startswith(p + "-")), spec)
        out.add(name)
    return out


def test_each_family_has_its_package_list_with_sources():
    for key in FAMILIES:
        packages = family_packages(key)
        assert packages.sources and all(isinstance(s, str) and s for s in packages.sources), key
        assert packages.package_manager in ("dnf", "yum"), key
        assert {"bash", "coreutils", "rpm", "docker", "ecs-init"} <= packages.packages, key
        assert not packages.has("btrfs-progs"), key
    # AL2023's ECS AMI (al2023-ami-minimal + packages_al2023) has no lvm2: the issue itself.
    assert not family_packages("al2023").has("lvm2")


def test_the_scan_finds_what_the_roles_run():
    """The scan is not empty-handed: it sees the commands the roles are known to run."""
    assert {"docker", "df", "rpm", "rm", "bash"} <= set().union(*(role_commands(r) for r in roles_on("al2023")))
    grow = role_commands("grow_agent")
    assert {"lvcreate", "vgextend", "mkfs.xfs", "xfs_growfs", "blkid", "mount", "xargs", "basename"} <= grow
    assert "{{grow_agent_package_manager[grow_agent_family]" in grow
    store = role_commands("instance_store")
    assert {"mdadm", "mkfs.xfs", "mount", "xargs", "{{instance_store_python"} <= store, store


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_command_of_every_role_comes_from_the_family_or_the_role(family):
    table = command_packages()
    fam = family_packages(family)
    problems = []
    for role in roles_on(family):
        installs = role_installs(role, family)
        for command in sorted(role_commands(role)):
            if command.startswith("{{"):
                expr = command[2:]
                assert expr in TEMPLATED, f"{role}: a command named by {expr!r}: say in TEMPLATED what it is"
                if TEMPLATED[expr] == "package manager":
                    assert grow_defaults()["grow_agent_package_manager"][family] == fam.package_manager
                    assert store_defaults()["instance_store_package_manager"][family] == fam.package_manager
                    assert provided(fam.package_manager, family), family
                continue
            if command.startswith("/") and command not in table:
                continue  # an absolute path into the prefix the roles install
            if command in CONDITIONAL:
                continue
            if command not in table:
                problems.append(f"{role}: `{command}` is not in schemas/family-packages.yaml `commands`")
            elif not provided(command, family, installs):
                problems.append(f"{role}: `{command}` ({' or '.join(table[command].packages)}) is not in the "
                                f"{family} AMI and the role does not install it")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("family", [k for k, f in FAMILIES.items() if f.data_device])
def test_instance_store_installs_mdadm_and_xfsprogs_pinned_to_the_family_repository(family):
    pins = family_packages(family).pins
    assert store_defaults()["instance_store_packages"][family] == [f"mdadm-{pins['mdadm']}", f"xfsprogs-{pins['xfsprogs']}"]
    assert not family_packages(family).has("mdadm")  # no family's ECS AMI lists it: the role must install it


@pytest.mark.parametrize("family", [k for k, f in FAMILIES.items() if f.data_device])
def test_grow_agent_installs_lvm2_and_xfsprogs_pinned_to_the_family_repository(family):
    pins = family_packages(family).pins
    assert grow_defaults()["grow_agent_packages"][family] == [f"lvm2-{pins['lvm2']}", f"xfsprogs-{pins['xfsprogs']}"]


# -- the local build host as the family's AMI ----------------------------------------------

from buildhost_fixtures import requires_buildhost, role_playbook, run_playbook, show, start_host  # noqa: E402

VENV_PYTHON = str(Path(__import__("sys").executable))  # has botocore; seen inside the root


@pytest.fixture(scope="module")
def al2023_host(tmp_path_factory):
    from factory.local.builder.family_root import LOCAL_POOL, look_like

    h = start_host(tmp_path_factory.mktemp("al2023-host"), docker=False)
    try:
        look_like(h, "al2023", keep=LOCAL_POOL)  # as a local bake's builder: btrfs-progs kept
        yield h
    finally:
        h.stop(remove=True)


@pytest.mark.slow
@requires_buildhost
def test_an_al2023_host_lacks_lvm2_until_dnf_installs_it(al2023_host, tmp_path):
    """The missing command as AL2023's bash reports it; dnf's answer for a package its
    repository lacks; a grow_agent role that forgets lvm2 fails, although btrfs-progs is
    there (a local bake's builder keeps it); then the pinned lvm2 installed by the role."""
    h = al2023_host
    missing = h.run("bash", "-c", "lvcreate --version", check=False)
    assert missing.returncode == 127 and "lvcreate: command not found" in missing.stderr
    for absent in ("mkfs.xfs", "xfs_growfs", "pvcreate", "mdadm"):  # mdadm: the instance_store role installs it
        assert h.run("bash", "-c", f"command -v {absent}", check=False).returncode != 0, absent
    assert h.run("bash", "-c", "command -v blkid && command -v mount && command -v df").returncode == 0
    nope = h.run("dnf", "install", "-y", "zfs", check=False)
    assert nope.returncode == 1 and "No match for argument: zfs" in nope.stdout
    assert "Error: Unable to find a match: zfs" in nope.stderr
    wrong = h.run("dnf", "install", "-y", "lvm2-9.9.9", check=False)
    assert wrong.returncode == 1 and "No match for argument: lvm2-9.9.9" in wrong.stdout

    ev = {"ansible_python_interpreter": h.python_interpreter, "grow_agent_enabled": True, "grow_agent_task": "t",
          "grow_agent_python": VENV_PYTHON, "factory_family": "al2023",
          "grow_agent_install_dir": "/opt/factory/grow", "grow_agent_config_file": "/etc/factory/grow.json"}
    play = role_playbook(tmp_path, "grow_agent")
    forgot = dict(ev, grow_agent_packages={"al2023": grow_defaults()["grow_agent_packages"]["al2023"][1:]})
    failed = run_playbook(h, play, forgot, tmp_path)
    assert failed.returncode != 0, show(failed)
    assert "The auto pool needs lvm2 and xfsprogs and blkid" in failed.stdout, show(failed)
    assert "lvcreate" not in failed.stdout.split("this image has")[-1].split("\n")[0], show(failed)

    done = run_playbook(h, play, ev, tmp_path)
    assert done.returncode == 0, show(done)
    assert h.run("bash", "-c", "lvcreate --version && mkfs.xfs -V").returncode == 0
    # What dnf put back is in the upper directory, so in the AMI's tree.
    assert h.path("/usr/sbin/lvm").exists() and h.path("/usr/sbin/mkfs.xfs").exists()
    again = run_playbook(h, play, ev, tmp_path)
    assert again.returncode == 0 and "changed=0" in again.stdout, show(again)
