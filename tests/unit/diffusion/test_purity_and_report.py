"""zsnr.diffusion stays pure torch, and its report command prints the paper's tables."""

import ast
import pathlib
import subprocess
import sys

import zsnr.diffusion
from zsnr.diffusion import report

PKG = pathlib.Path(zsnr.diffusion.__file__).parent


def test_import_pulls_in_nothing_but_torch():
    # everything importing zsnr.diffusion loads beyond what `import torch` loads: zsnr and stdlib only
    code = (
        "import sys; import torch; before = set(sys.modules); import zsnr.diffusion; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['zsnr']"


def test_module_level_imports_are_torch_or_stdlib():
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; report.py imports matplotlib inside plot()
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_report_prints_tables(capsys):
    assert report.main([]) == 0
    out = capsys.readouterr().out
    for value in ("4.035993e-05", "0.006353", "0.000049", "4.681917e-03", "0.068265"):
        assert value in out
    assert "trailing: 999 899 799 699 599 499 399 299 199 99" in out
    assert "leading: 900 800 700 600 500 400 300 200 100 0   (never visits t = 999: flawed)" in out


def test_report_plot(tmp_path):
    png = tmp_path / "fig2.png"
    report.main(["--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
