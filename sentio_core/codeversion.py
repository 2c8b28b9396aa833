"""Code versions derived from the code: what a stage runs, read from the static import graph.

A stage's code version hashes (1) the syntax tree of its task module and of every project module
it imports, transitively (imports inside functions included; imports under ``if TYPE_CHECKING:``
are not, they never run), with comments and docstrings left out, so only an edit that can change
what runs changes the version; and (2) the locked versions of the third-party libraries that the
library modules among them import (``requirements.lock``, then the ``==`` pins of
``pyproject.toml``, then what is installed).

``config.py`` is read section by section: a stage depends on the schema classes of the config
sections it reads and on the rest of the module, but not on the classes of other sections, so a new
key in one section changes only the stages that read that section (their config values change too).

Everything here reads files under a root folder, so a test can edit a copy of the tree and see
which stages would run again.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sentio_core", "tasks", "flows", "sentio")  # the project's own top-level packages
LIBRARY = "sentio_core"
CONFIG_MODULE = "sentio_core.config"


@dataclass(frozen=True)
class CodeVersion:
    """What a stage runs: its project modules, the libraries they import, and the hash of both."""

    modules: tuple[str, ...]  # project modules, sorted, the task module included
    libraries: tuple[tuple[str, str], ...]  # (distribution, version), sorted
    digest: str  # 16 hex

    @property
    def library_modules(self) -> tuple[str, ...]:
        """The ``sentio_core`` modules, without the package prefix (``costs``, ``env``, ...)."""
        return tuple(m.split(".", 1)[1] for m in self.modules if m.startswith(f"{LIBRARY}."))


def module_path(root: Path, module: str) -> Path | None:
    """The source file of a project module under ``root``, or None when there is none."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (their ``else`` branch is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names imported anywhere in ``tree`` (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> ast.Module:
    """A file's syntax tree, cached by its text (read-only: :func:`_digest` parses its own copy)."""
    return ast.parse(text)


@functools.lru_cache(maxsize=1024)
def _imports_of(text: str, module: str, is_package: bool) -> frozenset[str]:
    return frozenset(_imported_names(_parsed(text), module, is_package))


def _imports(path: Path, module: str) -> frozenset[str]:
    return _imports_of(path.read_text(), module, path.name == "__init__.py")


def project_imports(root: Path, module: str) -> set[str]:
    """The project modules ``module`` imports at run time (directly)."""
    path = module_path(root, module)
    if path is None:
        return set()
    out = set()
    for name in _imports(path, module):
        if name.split(".")[0] in PACKAGES and module_path(root, name) is not None and name != module:
            out.add(name)
    return out


def third_party_imports(root: Path, module: str) -> set[str]:
    """Top-level names of the third-party packages ``module`` imports at run time."""
    path = module_path(root, module)
    if path is None:
        return set()
    tops = {name.split(".")[0] for name in _imports(path, module)}
    return {t for t in tops if t and t not in PACKAGES and t not in sys.stdlib_module_names and t != "__future__"}


def closure(root: Path, module: str) -> tuple[str, ...]:
    """``module`` and every project module it imports, transitively; sorted."""
    seen, todo = {module}, [module]
    while todo:
        for dep in project_imports(root, todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _dump(nodes: list[ast.stmt]) -> str:
    return ast.dump(_strip_docstrings(ast.Module(body=nodes, type_ignores=[])), include_attributes=False)


def section_classes(tree: ast.Module) -> dict[str, str]:
    """Config section name -> schema class name, read from the ``Config`` class's annotated fields."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return {stmt.target.id: stmt.annotation.id for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(stmt.annotation, ast.Name)}
    return {}


def module_digest(root: Path, module: str, sections: tuple[str, ...] | None = None) -> str:
    """SHA-256 of a module's syntax tree without docstrings (comments never reach the tree).

    For the config module, ``sections`` picks the section classes that count (see the module doc);
    the ``Config`` class counts by its methods and validators, not by its list of sections.
    """
    path = module_path(root, module)
    return _digest(path.read_text(), sections if module == CONFIG_MODULE else None)


@functools.lru_cache(maxsize=1024)
def _digest(text: str, sections: tuple[str, ...] | None) -> str:
    tree = ast.parse(text)  # a fresh tree: docstrings are stripped in place
    nodes = list(tree.body)
    if sections is not None:
        by_section = section_classes(tree)
        wanted = {by_section[s] for s in sections if s in by_section}
        skipped = set(by_section.values()) - wanted
        nodes = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in skipped:
                continue
            if isinstance(node, ast.ClassDef) and node.name == "Config":
                node.body = [s for s in node.body if not isinstance(s, ast.AnnAssign)]
            nodes.append(node)
    return hashlib.sha256(_dump(nodes).encode()).hexdigest()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def locked_versions(root: Path) -> dict[str, str]:
    """Distribution -> version pinned in ``requirements.lock``, then ``pyproject.toml`` (``==`` only)."""
    out: dict[str, str] = {}
    pin = re.compile(r"^\s*\"?([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\";,#]+)")
    for name in ("pyproject.toml", "requirements.lock"):  # the lock file wins
        path = root / name
        if path.is_file():
            for line in path.read_text().splitlines():
                match = pin.match(line)
                if match:
                    out[_normalise(match.group(1))] = match.group(2)
    return out


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def library_versions(root: Path, import_names: set[str]) -> tuple[tuple[str, str], ...]:
    """(distribution, version) of each imported third-party package, from the lock when pinned there."""
    locked = locked_versions(root)
    out = set()
    for name in import_names:
        for dist in _distributions().get(name, [name]):
            key = _normalise(dist)
            version = locked.get(key)
            if version is None:
                try:
                    version = metadata.version(dist)
                except metadata.PackageNotFoundError:
                    version = "not installed"
            out.add((key, version))
    return tuple(sorted(out))


def code_version(module: str, sections: tuple[str, ...], root: Path = REPO_ROOT) -> CodeVersion:
    """The code version of the stage whose task module is ``module`` and which reads ``sections``.

    :param module: dotted name, e.g. ``tasks.train``.
    :param sections: the config sections the stage reads (they select the config module's classes).
    """
    modules = closure(root, module)
    digest = hashlib.sha256()
    imports: set[str] = set()
    for name in modules:
        digest.update(name.encode())
        digest.update(module_digest(root, name, tuple(sorted(sections))).encode())
        if name.startswith(f"{LIBRARY}."):
            imports |= third_party_imports(root, name)
    libraries = library_versions(root, imports)
    digest.update(repr(libraries).encode())
    return CodeVersion(modules, libraries, digest.hexdigest()[:16])


def project_version(root: Path = REPO_ROOT) -> str:
    """One version of the whole project's code (every module's tree and the locked libraries):
    tagged on registered models."""
    digest = hashlib.sha256()
    for package in ("sentio_core", "tasks", "flows"):
        for path in sorted((root / package).glob("*.py")):
            module = f"{package}.{path.stem}" if path.stem != "__init__" else package
            digest.update(module.encode())
            digest.update(module_digest(root, module).encode())
    digest.update(repr(sorted(locked_versions(root).items())).encode())
    return digest.hexdigest()[:16]
