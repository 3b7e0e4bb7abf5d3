"""Every guide in docs/ runs: its fenced python blocks, in order, as one script in a fresh directory.

All guides run in one child process (one TensorFlow and one torch import for all of them), each with its own
globals and working directory; the child prints a line per guide, and a failing guide is named with its error.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted(path for path in DOCS.glob("*.md") if path.name != "README.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

DRIVER = """
import os, runpy, sys, traceback
for script in sys.argv[1:]:
    os.chdir(os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    except BaseException:
        print("GUIDE FAILED", os.path.basename(script), flush=True)
        traceback.print_exc()
        sys.exit(1)
    print("GUIDE OK", os.path.basename(script), flush=True)
"""


def test_every_guide_is_listed_in_the_index():
    index = (DOCS / "README.md").read_text()
    assert GUIDES and all(f"]({guide.name})" in index for guide in GUIDES)


def test_guide_examples_run(tmp_path):
    scripts = []
    for guide in GUIDES:
        blocks = BLOCK.findall(guide.read_text())
        assert blocks, f"{guide.name} has no python example"
        (tmp_path / guide.stem).mkdir()
        scripts.append(tmp_path / guide.stem / f"{guide.stem}.py")
        scripts[-1].write_text("\n\n".join(blocks))
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                       PYTHONPATH=os.pathsep.join([str(DOCS.parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", DRIVER, *map(str, scripts)], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    assert [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("GUIDE OK")] == \
        [script.name for script in scripts]
