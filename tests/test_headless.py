"""A headless install: without the course extra (ipywidgets, ipyevents, IPython), ``import
rlhf_lite`` and the whole pipeline work, and the widget says what to install.

This test blocks those packages in a fresh interpreter; ``.ci/headless_install.sh`` checks the
real thing, ``pip install .`` into a new virtual environment (a few minutes, so not run here)."""
import json
import os
import subprocess
import sys

from conftest import RUNS

HEADLESS = r"""
import importlib.abc, json, sys
COURSE_ONLY = ("ipywidgets", "ipyevents", "IPython", "ipykernel")

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in COURSE_ONLY:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NotInstalled())
import rlhf_lite
from rlhf_lite.pipeline import run_pipeline
metrics = run_pipeline(sys.argv[1], cache_dir=sys.argv[2], pairs=30, ppo_steps=1,
                       heldout_samples=1, progress=False)
try:
    from rlhf_lite.widget import LabelingWidget
    LabelingWidget(None, [("p", "a", "b")])
    widget = "built"
except ImportError as e:
    widget = str(e)
print(json.dumps({"episodes": metrics["ppo"]["episodes"], "widget": widget,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in COURSE_ONLY)}))
"""


def test_the_package_and_the_pipeline_need_no_course_extra(base, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, "-c", HEADLESS, str(tmp_path / "run"), str(RUNS)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["episodes"] == 64 and result["loaded"] == []
    assert result["widget"] == ('the labeling widget needs ipywidgets, which comes with the '
                                'course extra: pip install "rlhf-lite[course]"')
    assert (tmp_path / "run" / "metrics.json").is_file()
