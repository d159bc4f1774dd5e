"""Every benchmark of the pipeline, printed as one table (`make bench`).

    python -m bench.run --photos ../shared/data/flickr30k_sample/images [--sections stages,dag,memory]

Sections (see each module): stages (resize, annotate, embed side by side with their baselines), dag
(cold / nothing new / +10%), memory (peak RSS per stage, shard of 100 vs 1,000), and a projection to
the full Flickr30k from the first two. The table is Markdown, ready for the README; the full figures
go to ``--json``. On a machine with a GPU, embed and annotate are measured there too.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path

from .common import print_table


def machine() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, "
            f"{f'{len(gpus)} GPU' if gpus else 'no GPU'}, TensorFlow {tf.__version__}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/flickr30k_sample/images"))
    parser.add_argument("--sections", default="stages,dag,memory")
    parser.add_argument("--detector", default=default_detector(), help="the pipeline's default detector")
    parser.add_argument("--memory-detector", default=default_detector(), help="detector for the memory runs")
    parser.add_argument("--embed-weights", default="none",
                        help="none: random weights, same graph and cost (machines without internet)")
    parser.add_argument("--chunk", type=int, default=100, help="photos per shard in the side-by-side runs")
    parser.add_argument("--repeats", type=int, default=3, help="fresh roots for the (fast) resize runs")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    sections = set(args.sections.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="emotion-bench-"))
    print(f"machine: {machine()}\nphotos: {args.photos} ({len(list(args.photos.glob('*.jpg')))}), scratch: {work}",
          flush=True)

    rows, rates, cold = [], {}, None
    if "stages" in sections:
        stage_rows, rates = bench_stages(args, work / "stages")
        rows += stage_rows
    if "dag" in sections:
        from .dag import bench_dag

        dag_rows, cold = bench_dag(args.photos, work / "dag", ["--embed-weights", args.embed_weights,
                                                               "--detector", args.detector])
        rows += dag_rows
        print_table(dag_rows)
    if "memory" in sections:
        from .memory import bench_memory

        memory_rows = bench_memory(args.photos, work / "memory", ["--embed-weights", args.embed_weights,
                                                                  "--detector", args.memory_detector,
                                                                  "--tuner-max-epochs", "2"])
        rows += memory_rows
        print_table(memory_rows)
    if cold:
        from .dag import projection

        rows += projection(cold, rates)
    print("\n## All figures\n", flush=True)
    table = print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": [asdict(r) for r in rows], "table": table},
                                        indent=2, default=str))


def bench_stages(args: argparse.Namespace, work: Path) -> tuple[list, dict[str, float]]:
    """The stages section's rows (resize, annotate and its variants, embed) and each stage's photos/s."""
    from .stages import bench_annotate, bench_annotate_teachers, bench_embed, bench_resize

    rows = [bench_resize(args.photos, work, args.chunk, args.repeats)]
    print_table(rows[-1:])
    annotate_row, annotated = bench_annotate(args.photos, work, args.chunk, args.detector)
    rows.append(annotate_row)
    print_table([annotate_row])
    if args.detector != "mtcnn":  # the default against today's MTCNN, side by side (issue 33)
        from .stages import bench_annotate_detectors

        detector_rows = bench_annotate_detectors(args.photos, work, args.chunk, args.detector)
        rows += detector_rows
        print_table(detector_rows)
    rows.append(bench_annotate_teachers(args.photos, work, args.chunk, args.detector))  # issue 31
    print_table(rows[-1:])
    annotated = annotated.replace(embed_weights=args.embed_weights)
    embed_row = bench_embed(annotated, 32, mixed_precision=False, label="embed")
    rows.append(embed_row)
    print_table([embed_row])
    if gpu_present():
        rows.append(bench_embed(annotated, 256, mixed_precision=True, label="embed (GPU, mixed precision)"))
    return rows, {"resize": rows[0].notes["pipeline"]["per_s"], "annotate": annotate_row.notes["per_s"],
                  "embed": embed_row.notes["pipeline"]["per_s"]}


def default_detector() -> str:
    from emotion_pipeline.core.config import PipelineConfig

    return PipelineConfig(source=".", root=".").detector


def gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


if __name__ == "__main__":
    main()
