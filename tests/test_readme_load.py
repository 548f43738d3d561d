"""The README's "Load it" snippet, as written, against a freshly generated quickstart output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "prompts" / "quickstart.toml"

# Runs a snippet one statement at a time; after each statement whose lines say `# splits: a, b`, the
# dataset it built must have exactly those splits, and every split must hold rows.
CHECKER = r"""
import ast, re, sys
source = open(sys.argv[1]).read()
lines = source.splitlines()
namespace = {}
checked = 0
for node in ast.parse(source).body:
    exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    claim = re.search(r"#\s*splits:\s*([\w, ]+?)\s*(?:\(|$)", text, re.M)
    if claim:
        want = sorted(s.strip() for s in claim.group(1).split(","))
        got = sorted(namespace["ds"])
        assert got == want, f"line {node.lineno}: splits {got}, the README says {want}"
        assert all(len(namespace["ds"][s]) > 0 for s in got)
        checked += 1
assert checked, "no '# splits:' claim in the snippet"
print("checked", checked)
"""


def readme_snippets() -> list[str]:
    """Every ```python block of README.md that calls load_dataset."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [b for b in blocks if "load_dataset(" in b]


def test_the_readme_load_dataset_snippet_gives_the_splits_it_promises(tmp_path: Path) -> None:
    snippets = readme_snippets()
    assert snippets, "the README shows no load_dataset snippet"
    # The quickstart as the README runs it: from a working directory, into outputs/quickstart.
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "run", str(QUICKSTART), "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "outputs" / "quickstart" / "manifest.json").exists()
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # no cache shared with other runs
    }
    for i, snippet in enumerate(snippets):
        path = tmp_path / f"snippet{i}.py"
        path.write_text(snippet)
        proc = subprocess.run(
            [sys.executable, "-c", CHECKER, str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"README snippet {i}:\n{snippet}\n{proc.stderr[-2000:]}"
