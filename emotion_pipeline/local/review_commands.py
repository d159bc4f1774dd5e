"""``emotion-pipeline review ...``: the review queue out to Label Studio and its answers back.

    emotion-pipeline review export-label-studio --root out --out tasks.json [--image-url-prefix PREFIX]
    emotion-pipeline review import-label-studio --root out export.json [--reviewer NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIG_NAME = "label_config.xml"  # written next to the tasks: the project's labelling interface


def add_review_parser(commands: argparse._SubParsersAction) -> None:
    """The ``review`` command and its two subcommands, on the CLI's subparsers."""
    review = commands.add_parser("review", help="review the queue in Label Studio instead of the dashboard")
    actions = review.add_subparsers(dest="review_command", required=True)
    export = actions.add_parser("export-label-studio", help="the review queue as Label Studio tasks (import "
                                f"JSON with the machine's box and label as predictions), and {CONFIG_NAME}")
    export.add_argument("--root", required=True, help="the pipeline's storage root")
    export.add_argument("--out", required=True, type=Path, help="the tasks' JSON file")
    export.add_argument("--image-url-prefix", help="how Label Studio reaches the photos: a prefix the photo's "
                        "source key is appended to (/data/local-files/?d=photos/, gs://bucket/photos/), or a "
                        "template naming {source_key}, {source_uri} or {image_id} (default: the source URI)")
    imported = actions.add_parser("import-label-studio", help="record Label Studio's answers (its JSON "
                                  "export) as decisions; prints what became of each task")
    imported.add_argument("--root", required=True, help="the pipeline's storage root")
    imported.add_argument("export", type=Path, help="Label Studio's JSON export (Export > JSON)")
    imported.add_argument("--reviewer", default="label-studio",
                          help="the reviewer of annotations that name no annotator (default: label-studio)")


def run_review(args: argparse.Namespace) -> int:
    if args.review_command == "export-label-studio":
        return export_label_studio(args.root, args.out, args.image_url_prefix)
    return import_label_studio(args.root, args.export, args.reviewer)


def export_label_studio(root_uri: str, out: Path, image_url: str | None) -> int:
    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.labelling.label_studio import LABEL_CONFIG, export_tasks

    root = open_storage(root_uri)
    queue = catalog.read_review_queue(root)
    if queue is None:
        print("no review queue under this root: run the review_queue stage first "
              "(emotion-pipeline stage review_queue ...)", file=sys.stderr)
        return 1
    tasks = export_tasks(root, queue, image_url)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, indent=2))
    (out.parent / CONFIG_NAME).write_text(LABEL_CONFIG)
    print(json.dumps({"queued": len(queue), "tasks": len(tasks), "left_out": len(queue) - len(tasks),
                      "tasks_file": str(out), "label_config": str(out.parent / CONFIG_NAME)}, indent=2))
    return 0


def import_label_studio(root_uri: str, export: Path, reviewer: str) -> int:
    from emotion_pipeline.core.storage import open_storage
    from emotion_pipeline.labelling.label_studio import import_export

    exported = json.loads(export.read_text())
    if not isinstance(exported, list):
        print(f"{export}: not Label Studio's JSON export (a list of tasks)", file=sys.stderr)
        return 1
    result = import_export(open_storage(root_uri), exported, reviewer)
    print(json.dumps(result.to_dict(), indent=2))
    return 0
