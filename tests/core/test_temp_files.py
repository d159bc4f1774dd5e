"""No stage leaves temp files behind (MLflow's model downloads did: one /tmp/tmp* folder per load)."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_whole_run_leaves_no_temp_files(trained_root):
    config, _ = trained_root
    temp = Path(config.root).parent / "tmp"  # the fixture's tempfile.tempdir while every stage ran
    assert temp.is_dir()
    # TensorFlow's autograph keeps the code it generates in temp files until the process exits, and
    # removes them then (atexit, tensorflow/python/autograph/pyct/loader.py): not left behind.
    left = sorted(p.relative_to(temp).as_posix() for p in temp.rglob("*")
                  if not p.name.startswith("__autograph_generated_file"))
    assert left == []
