"""One stage of ``bench.scale_rows`` in a process of its own: ``python -m bench.rows_stage CONFIG NAME OUT``.

Runs ``run_stage(NAME, config)`` (``discover_rerun`` is discover again, with nothing new) and writes
its seconds, measured around ``run_stage`` only (imports left out), and its result to OUT.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage


def main() -> None:
    config_file, name, out = sys.argv[1:4]
    logging.basicConfig(level=logging.WARNING)
    config = PipelineConfig.from_mapping(json.loads(Path(config_file).read_text()))
    stage = "discover" if name == "discover_rerun" else name
    start = time.perf_counter()
    result = run_stage(stage, config, run_id="bench-scale-rows")
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"seconds": seconds, "result": result.to_dict()}, default=str))


if __name__ == "__main__":
    main()
