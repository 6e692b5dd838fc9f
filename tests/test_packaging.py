"""`pip install .` (not editable) installs only the packages pyproject.toml lists: every package
directory of the source tree must be among them."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def listed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r"^packages\s*=\s*(\[.*?\])", text, re.M | re.S)
    assert match, "pyproject.toml has no packages list"
    return set(ast.literal_eval(match.group(1)))


def test_every_package_directory_is_installed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "qcg_hier").rglob("__init__.py")}
    assert found, "no package found under qcg_hier/"
    missing = found - listed_packages()
    assert not missing, f"packages a non-editable install would leave out: {sorted(missing)}"
    assert "qcg_hier_agent" in listed_packages()  # agents/, installed under that name


def test_our_service_command_has_a_name_no_other_package_owns():
    """Upstream's package (which EasyVVUQ pulls in) installs its own `qcg-pm-service` over ours or
    under it; `qcg-hier-service` is the same command of ours under a name it does not use, and the
    one our tools call."""
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11; we support 3.10)
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', text.split("[project.scripts]")[1].split("\n[")[0], re.M))
    assert scripts["qcg-hier-service"] == scripts["qcg-pm-service"] == "qcg_hier.entry:service_main"
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert '"qcg-hier-service"' in conftest and '"qcg-pm-service"' not in conftest
