"""The library documents itself: every public class and function of zoo/ and models/ has a docstring, and
nothing cites the team's private spec files (a reader cannot open them; cite the paper or owner/repo:path)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("zoo", "models")
SPEC_FILES = re.compile(r"\b(speech|vision_multimodal|ecosystem|DESIGN)\.md\b")


def _python_files(*folders):
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _undocumented(path: Path) -> list[str]:
    missing = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(f"{path.relative_to(ROOT)}:{child.lineno} {prefix}{child.name}")
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return missing


def test_every_public_class_and_function_has_a_docstring():
    missing = [item for path in _python_files(*LIBRARY) for item in _undocumented(path)]
    assert not missing, "public names without a docstring:\n" + "\n".join(missing)


def test_nothing_cites_the_private_spec_files():
    """Code, docs, recipes, cards and tests of every family included: a reader of the repository cannot open
    the team's spec files."""
    skip = {".git", "build", "dist", "__pycache__", "zoo.egg-info", ".pytest_cache"}
    files = [p for p in sorted(ROOT.rglob("*")) if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
             and p.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg")]
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if SPEC_FILES.search(line)]
    assert not cited, "cite the paper or owner/repo:path instead of a spec file:\n" + "\n".join(cited)
