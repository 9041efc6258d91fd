"""One direction of dependencies: the product loads no lab module, and the import graph has no cycles.

The product reaches its optional lab only through the seam ``orchestrator.emulation``, which loads the
lab's plug-in module by name (as an entry point would) for an inventory with a ``lab:`` section; so the
lab imports the product, never the reverse. ``orchestrator.commands.lab`` is the lab's own command: the
CLI loads it by name for ``keyfleet lab`` only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import emulation
from orchestrator.share.manifest import new_signing_key_pair
from tests.conftest import REPO, cli_env

PACKAGE = REPO / "orchestrator"
LAB = "orchestrator.lab"
LAB_COMMAND = "orchestrator.commands.lab"
LOADED_LAB = "sorted(m for m in sys.modules if m == 'orchestrator.lab' or m.startswith('orchestrator.lab.'))"
COMMANDS = sorted(
    f"orchestrator.commands.{p.stem}" for p in (PACKAGE / "commands").glob("*.py") if p.stem not in ("__init__", "lab")
)


def _is_lab(module: str) -> bool:
    return module == LAB or module.startswith(LAB + ".")


def _run_python(code: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int | None, list[str]]:
    """Run ``code`` in a fresh interpreter: the value it left in ``code`` (a command's exit code) and the
    lab modules it loaded (written to a file, not stdout)."""
    out = cwd / "lab-modules.json"
    dump = f"\nimport json, sys\nopen({str(out)!r}, 'w').write(json.dumps([globals().get('code'), {LOADED_LAB}]))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code + dump, *args],
        env=cli_env(cwd, env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stderr
    exit_code, loaded = json.loads(out.read_text())
    return exit_code, loaded


# -- (a) importing a command loads no lab module ---------------------------------------------------


@pytest.mark.parametrize("module", [*COMMANDS, "orchestrator.cli", "orchestrator.emulation"])
def test_importing_a_product_module_loads_no_lab(module: str, tmp_path: Path) -> None:
    assert _run_python(f"import {module}", cwd=tmp_path) == (None, [])


@pytest.mark.parametrize("module", ["orchestrator.commands.audit", "orchestrator.commands.prune"])
def test_commands_that_contact_no_server_load_no_winrm_stack(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('winrm', 'requests', 'spnego') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_every_command_is_checked() -> None:
    assert {"orchestrator.commands.backup", "orchestrator.commands.restore", "orchestrator.commands.run"} <= set(
        COMMANDS
    )
    assert LAB_COMMAND not in COMMANDS


# -- (b) a real command on real servers loads no lab module ----------------------------------------

_RUN_CLI = "import sys\nfrom orchestrator.cli import main\ncode = main(sys.argv[1:])"


def _production_inventory(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A one-server inventory of no lab: the server's port is closed, so the host fails fast."""
    secret, public = new_signing_key_pair()
    private = secret.reveal()
    (tmp_path / "share").mkdir()
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "defaults:\n"
        "  credential: {username: 'CONTOSO\\svc', password: env:KF_TEST_WINRM}\n"
        "  connect_timeout: 2s\n"
        "  host_timeout: 20s\n"
        "  retries: 0\n"
        "share: {url: share}\n"
        "backup: {password: env:KF_TEST_BACKUP}\n"
        f"signing: {{private_key: env:KF_TEST_SIGNING, public_key: '{public}'}}\n"
        "management_groups:\n"
        "  G:\n"
        "    hosts:\n"
        "      ms01: {role: management_server, address: 127.0.0.1, port: 1}\n"
    )
    env = {"KF_TEST_WINRM": "Winrm-Pw-1", "KF_TEST_BACKUP": "Backup-Pw-123456", "KF_TEST_SIGNING": private}
    return inventory, env


@pytest.mark.parametrize(
    ("command", "expected"),
    [  # 1: the server is down (backup, doctor), or it has no backup (audit)
        (("inventory", "--json"), 0),
        (("backup", "--json"), 1),
        (("audit", "--format", "json"), 1),
        (("doctor", "--json"), 1),
    ],
    ids=lambda c: c[0] if isinstance(c, tuple) else str(c),
)
def test_a_command_on_real_servers_loads_no_lab(tmp_path: Path, command: tuple[str, ...], expected: int) -> None:
    inventory, env = _production_inventory(tmp_path)
    name, *options = command
    exit_code, loaded = _run_python(_RUN_CLI, name, "-i", str(inventory), *options, cwd=tmp_path, env=env)
    assert (exit_code, loaded) == (expected, [])
    if name == "backup":  # the run really happened: the host failed and its outcome was recorded
        assert len(list((tmp_path / "share" / "runs").glob("*.json"))) == 1


def test_a_lab_inventory_loads_the_lab_through_the_seam(tmp_path: Path) -> None:
    """The control: the same probe sees the lab as soon as the inventory has a lab: section."""
    inventory = tmp_path / "lab.yml"
    inventory.write_text(
        "lab: {serve: false, state_dir: state}\n"
        "defaults:\n"
        "  credential: {username: 'LAB\\kf', password: lab-pass-1234}\n"
        "management_groups:\n"
        "  G:\n"
        "    hosts:\n"
        "      ms01: {role: management_server, address: 127.0.0.9, lab: {faults: [down]}}\n"
    )
    exit_code, loaded = _run_python(_RUN_CLI, "inventory", "-i", str(inventory), "--json", cwd=tmp_path)
    assert exit_code == 0 and emulation.LAB_MODULE in loaded
    assert "orchestrator.lab.fleet" not in loaded  # showing a lab inventory starts no server


# -- (c) the import graph --------------------------------------------------------------------------


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path, package: bool, modules: dict[str, tuple[Path, bool]]) -> list[tuple[str, bool]]:
    """The package modules ``name`` imports, each with whether the import runs only inside a function.
    Imports under ``if TYPE_CHECKING:`` are not imports at run time."""
    found: list[tuple[str, bool]] = []

    def add(target: str, in_function: bool) -> None:
        while target and target not in modules:  # ``from a.b import name``: the module a.b
            target = target.rpartition(".")[0]
        if target:
            found.append((target, in_function))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, inside)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = name.split(".") if package else name.split(".")[:-1]
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                for alias in child.names:
                    add(f"{base}.{alias.name}", inside)
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return [(target, in_function) for target, in_function in found if target != name]


def _graph(*, with_functions: bool) -> dict[str, set[str]]:
    """Module -> the modules importing it runs: its imports and their parent packages' ``__init__``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for target, in_function in _imports(name, path, package, modules):
            if in_function and not with_functions:
                continue
            graph[name].add(target)
            parent = target.rpartition(".")[0]
            while parent:
                if parent != name:
                    graph[name].add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), else None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_of_every_kind() -> None:
    """Not vacuous: module-level, function-level and relative-free ``from`` imports are all found."""
    modules = _graph(with_functions=False)
    everything = _graph(with_functions=True)
    assert "orchestrator.inventory.loader" in modules["orchestrator.commands.backup"]
    assert "orchestrator.emulation" in modules["orchestrator.lab.plugin"]
    assert "orchestrator.lab.fleet" not in modules["orchestrator.lab.plugin"]
    assert "orchestrator.lab.fleet" in everything["orchestrator.lab.plugin"]  # only to serve
    assert "orchestrator.lab" in modules["orchestrator.lab.fleet"]  # a parent package's __init__ runs too


@pytest.mark.parametrize("with_functions", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycles(with_functions: bool) -> None:
    cycle = _cycle(_graph(with_functions=with_functions))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_product_module_imports_the_lab() -> None:
    """At module level or inside a function alike: only the lab and its own command import it."""
    offenders = [
        f"{name} imports {target}"
        for name, targets in _graph(with_functions=True).items()
        if not _is_lab(name) and name != LAB_COMMAND
        for target in targets
        if _is_lab(target) or target == LAB_COMMAND
    ]
    assert offenders == []


def test_the_inventory_model_knows_no_lab_type() -> None:
    tree = ast.parse((PACKAGE / "inventory" / "model.py").read_text(encoding="utf-8"))
    names = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    assert "Section" in names and not [n for n in names if n.startswith("Lab")]


def test_the_product_settings_declare_only_the_two_lab_hooks() -> None:
    """The lab's keys live in the lab's own table: the product's has the two opaque ``lab:`` mappings only."""
    from orchestrator.inventory import settings

    lab_scopes = {settings.Scope.LAB, settings.Scope.HOST_LAB}
    hooks = [(s.name, s.scopes, s.kind, s.section) for s in settings.SETTINGS if s.plugin]
    assert hooks == [
        ("lab", (settings.Scope.TOP,), settings.Kind.MAPPING, settings.Scope.LAB),
        ("lab", settings.HOST_SCOPES, settings.Kind.MAPPING, settings.Scope.HOST_LAB),
    ]
    assert [s.name for s in settings.SETTINGS if lab_scopes & set(s.scopes)] == []
    assert [s.name for s in settings.SETTINGS if s.section in lab_scopes and not s.plugin] == []


def test_the_lab_declares_its_own_settings() -> None:
    """The control: the lab's table holds the keys of both lab mappings, and nothing but them."""
    from orchestrator.inventory.settings import Scope
    from orchestrator.lab import settings

    assert {"serve", "state_dir", "seed", "kerberos", "realm"} == set(settings.settings_for(Scope.LAB))
    assert {"faults", "extra_roles", "windows", "tool_path"} <= set(settings.settings_for(Scope.HOST_LAB))
    assert all(set(s.scopes) <= {Scope.LAB, Scope.HOST_LAB} for s in settings.SETTINGS)


@pytest.mark.parametrize(
    ("host", "key", "fragment"),
    [  # the product's reader, asking the lab's table through the seam
        (", faults: [down]", "management_groups.G.hosts.ms01.faults", "('faults' belongs in: host lab)"),
        (", lab: {fault: [down]}", "management_groups.G.hosts.ms01.lab.fault", "did you mean 'faults'?"),
        (", lab: {role: x}", "management_groups.G.hosts.ms01.lab.role", "('role' belongs in: defaults, group, host)"),
    ],
)
def test_lab_keys_are_checked_by_the_lab_in_any_inventory(tmp_path: Path, host: str, key: str, fragment: str) -> None:
    """A lab key in the wrong place, or a wrong key in a host's lab: mapping, is named even without a lab: section."""
    from orchestrator.errors import ConfigError
    from orchestrator.inventory.loader import load_inventory

    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        f"management_groups:\n  G:\n    hosts:\n      ms01: {{role: management_server, transport: kerberos{host}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_inventory(inventory)
    assert (caught.value.line, caught.value.key) == (4, key) and fragment in caught.value.message
