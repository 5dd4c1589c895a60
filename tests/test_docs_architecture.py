"""docs/architecture.md stays true to the code: the files it names exist, and the entry points in its
table are defined in that row's modules."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()
PACKAGE = REPO / "src" / "stepnorm"


def _resolve(token: str) -> Path | None:
    """A file or directory named in the page: relative to the repository or to src/stepnorm."""
    token = token.rstrip("/")
    for base in (REPO, PACKAGE, PACKAGE / "sources", PACKAGE / "stats", REPO / "validators", REPO / "pipelines"):
        if (base / token).exists():
            return base / token
    return None




def _paths(text: str) -> set[str]:
    return set(re.findall(r"`([\w/.<>-]+(?:\.py|\.md|\.yaml|/))`", text))


def test_named_files_exist():
    missing = sorted(p for p in _paths(DOC) if "<" not in p and _resolve(p) is None)
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def _defined(path: Path) -> set[str]:
    """Top-level names a module defines, and ``Class.method`` for its classes' methods."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def _module_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


def test_table_entry_points_are_defined_where_the_table_says():
    rows = [line.split("|")[1:-1] for line in DOC.splitlines() if line.startswith("| ") and "---" not in line]
    checked = 0
    for step, modules, entries in rows[1:]:  # past the header
        files = [f for p in _paths(modules) if (r := _resolve(p)) for f in _module_files(r)]
        assert files, f"row {step.strip()!r}: no module found in {modules.strip()!r}"
        defined = set().union(*(_defined(f) for f in files))
        for token in re.findall(r"`([A-Za-z_][\w.]*)(?:\([^`]*\))?`", entries):
            if token.endswith((".py", ".yaml", ".json", ".md")):
                continue  # a file: test_named_files_exist
            head, _, rest = token.partition(".")
            # `rlds.shard_reads`: ``shard_reads`` in the module ``rlds`` beside the row's modules
            module = next((m for f in files for d in (f.parent, f.parent.parent)
                           for m in (d / f"{head}.py", d / head / "__init__.py") if rest and m.exists()), None)
            if module is not None and module not in files:
                found = rest in _defined(module) or rest.split(".")[0] in _defined(module)
            else:
                found = token in defined or (module is not None and rest.split(".")[0] in defined)
            assert found, f"row {step.strip()!r}: `{token}` is not defined in {[str(f.relative_to(REPO)) for f in files]}"
            checked += 1
    assert checked > 40

