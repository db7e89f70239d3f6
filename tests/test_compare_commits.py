"""benchmarks/compare_commits.py: the earlier commit's side imports that commit's package, laid out as
installed (molora.stages from stages/, ...), and never this checkout's."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("compare_commits", ROOT / "benchmarks" / "compare_commits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_base_side_imports_the_base_tree_laid_out_as_installed(tmp_path):
    mod = _module()
    tree = tmp_path / "tree"
    (tree / "molora").mkdir(parents=True)
    (tree / "molora" / "__init__.py").write_text("WHO = 'base molora'\n")
    (tree / "molora" / "loss.py").write_text("WHO = 'base loss'\n")
    (tree / "stages").mkdir()
    (tree / "stages" / "__init__.py").write_text("WHO = 'base stages'\n")
    view = mod.package_view(tree, tmp_path / "view")
    code = "import molora, molora.loss, molora.stages; print(molora.WHO, '|', molora.loss.WHO, '|', molora.stages.WHO)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(view), "PATH": "/usr/bin:/bin"}, check=True).stdout.strip()
    assert out == "base molora | base loss | base stages"
    where = mod.imported_from(str(view), tmp_path).split()
    assert all(tree.resolve() in Path(f).resolve().parents for f in where)
    here = mod.imported_from(None, tmp_path).split()  # the other side: this checkout, as installed
    assert all(ROOT.resolve() in Path(f).resolve().parents for f in here)
