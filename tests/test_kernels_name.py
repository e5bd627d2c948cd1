"""The repository's top-level ``kernels/`` never stands in for the PyPI package ``kernels`` (which transformers 5.25
and later imports) when the repository root is on ``sys.path``, as it is under pytest and ``python -m``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(code: str, *path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose sys.path starts with the repository root, then ``path``."""
    setup = f"import sys; sys.path[:0] = {[str(REPO), *map(str, path)]!r}; "
    return subprocess.run([sys.executable, "-c", setup + code], capture_output=True, text=True, cwd=REPO)


def test_import_kernels_finds_the_installed_package_behind_the_repository(tmp_path):
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("CUDAProperties = 'the installed one'\n")
    (site / "kernels" / "layer.py").write_text("NAME = 'its submodule'\n")
    result = run(
        "from kernels import CUDAProperties; import kernels.layer; print(CUDAProperties, kernels.layer.NAME)", site
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the installed one its submodule"


def test_without_an_installed_package_import_kernels_is_an_empty_module_and_the_projects_kernels_still_load():
    """transformers 5.24 imports whatever ``kernels`` it finds and reads its version: no error, no version, none of
    the project's kernels under that name."""
    no_site_packages = "sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]; "
    probe = (
        "import kernels; print([n for n in vars(kernels) if not n.startswith('_')], hasattr(kernels, '__version__'))"
    )
    result = run(no_site_packages + probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"
    result = run("from vllm_padrec.kernels import catalog_mask_draft, padrec_input; print('ok')")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
