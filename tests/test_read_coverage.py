"""A stage's done marker covers everything it reads (registry.py's promise), checked by what the stages
really read: trained_root was built through storages that record every key (tests/read_log.py), and
each key a stage with a done marker read must be vouched for by its declaration: its own folder, its
photos (the manifest and their source files), what its fingerprint reads (covered markers, ``inputs``)
or, recursively, what the markers it covers vouch for. A stage that reads something else (today's
evaluate read the gold check's table and kept its marker when a gold set was added) fails here."""
import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.manifest import load_manifest, shard_rows
from emotion_pipeline.core.registry import STAGES, Stage, covered_by, upstream_of
from emotion_pipeline.core.runner import StageRun, fingerprint
from emotion_pipeline.core.storage import Storage, open_storage
from tests.read_log import RecordingStorage


def stage_photos(manifest: pd.DataFrame, shard: int | None) -> pd.DataFrame:
    """The photos the runner gives a stage: the shard's members, or every present photo."""
    photos = shard_rows(manifest, shard) if shard is not None else manifest[manifest["present"]]
    return photos.reset_index(drop=True)


def covered_shards(spec: Stage, shard: int | None, manifest: pd.DataFrame) -> list[int | None]:
    """The shards of ``spec`` a stage running on ``shard`` covers (as ``runner.fingerprint`` does)."""
    if not spec.per_shard:
        return [None]
    return [shard] if shard is not None else sorted(int(s) for s in manifest.loc[manifest["present"], "shard"].unique())


# Outputs a stage writes outside its catalog folder.
OUTSIDE_FOLDER = {"resize": catalog.PROCESSED_FOLDER + "/"}
# annotate reads resize's table without covering resize's marker: that table depends on the photos and
# max_image_pixels, both in annotate's fingerprint; resize's fingerprint also holds image_size, for the
# processed copies annotate never reads. Covering resize would re-annotate every shard of every existing
# root once, for no change in what annotate reads: accepted, and only this.
ACCEPTED = {("annotate", catalog.RESIZE_FOLDER + "/")}


def outputs(spec: Stage, shard: int | None) -> set[str]:
    """The folders a stage writes on ``shard`` (its shard folder, or its whole folder)."""
    folder = spec.folder if shard is None else catalog.shard_folder(spec.folder, shard)
    return {folder + "/"} | ({OUTSIDE_FOLDER[spec.name]} if spec.name in OUTSIDE_FOLDER else set())


def holds_fingerprint_of(spec: Stage, upstream: Stage) -> bool:
    """Whether ``spec``'s fingerprint holds every part of ``upstream``'s (its photos, its knobs; it covers
    nothing and has no inputs): then ``upstream``'s outputs change only when ``spec``'s fingerprint does."""
    return (spec.photos and upstream.photos and not (spec.per_shard and not upstream.per_shard)
            and not covered_by(upstream) and not upstream.inputs and set(upstream.knobs) <= set(spec.knobs))


def vouched_keys(spec: Stage, config: PipelineConfig, root: Storage, manifest: pd.DataFrame,
                 shard: int | None) -> set[str]:
    """The keys (and folders, ending in ``/``) whose change changes ``spec``'s fingerprint on ``shard``:
    what its marker vouches for, and what computing its fingerprint reads (its ``inputs``)."""
    keys = vouched_by_marker(spec, manifest, shard)
    recording = RecordingStorage(root, keys)
    fingerprint(StageRun(spec, config, recording, recording, stage_photos(manifest, shard), shard, manifest=manifest))
    return keys


def vouched_by_marker(spec: Stage, manifest: pd.DataFrame, shard: int | None) -> set[str]:
    """What a change of ``spec``'s done marker on ``shard`` stands for: its own outputs, the manifest
    (the runner reads it to give every stage its photos), the outputs of an upstream whose fingerprint
    it holds, and recursively what each marker it covers stands for. Not what its ``inputs`` read: an
    inputs function may digest a part of a key only (train: the training rows of the dataset)."""
    keys: set[str] = {f"{catalog.MANIFEST}.parquet"} | outputs(spec, shard)
    for name in upstream_of(spec):
        if holds_fingerprint_of(spec, STAGES[name]):
            keys |= outputs(STAGES[name], shard if STAGES[name].per_shard else None)
    for name in covered_by(spec):
        for s in covered_shards(STAGES[name], shard, manifest):
            keys |= vouched_by_marker(STAGES[name], manifest, s)
    return keys | {folder for stage, folder in ACCEPTED if stage == spec.name}


def covers_photos(spec: Stage) -> bool:
    """Whether ``spec``'s fingerprint changes with its photos, itself or through a marker it covers."""
    return spec.photos or any(covers_photos(STAGES[name]) for name in covered_by(spec))


def undeclared_reads(spec: Stage, config: PipelineConfig, root: Storage, manifest: pd.DataFrame,
                     shard: int | None, reads: dict[str, set[str]]) -> list[str]:
    """The keys ``spec`` read on ``shard`` (``reads["root"]``, ``reads["source"]``) that its fingerprint
    does not vouch for; source keys as ``source:<key>``."""
    vouched = vouched_keys(spec, config, root, manifest, shard)
    folders = tuple(v for v in vouched if v.endswith("/"))
    found = sorted(k for k in reads["root"] if k not in vouched and not k.startswith(folders))
    photos = set(stage_photos(manifest, shard)["source_key"]) if covers_photos(spec) else set()
    return found + sorted(f"source:{k}" for k in reads["source"] - photos)


def test_every_stage_reads_only_what_its_done_marker_covers(trained_root, trained_root_reads):
    config, _ = trained_root
    root = open_storage(config.root)
    manifest = load_manifest(root)
    assert {name for name, _ in trained_root_reads} == set(STAGES)  # every registered stage ran through the log
    undeclared = {}
    for (name, shard), reads in trained_root_reads.items():
        spec = STAGES[name]
        if not spec.marker:  # no fingerprint to disagree with: it runs every time (discover, check_drift)
            continue
        assert set(covered_by(spec)) <= set(upstream_of(spec)), name  # a covered marker is written first
        found = undeclared_reads(spec, config, root, manifest, shard, reads)
        if found:
            undeclared[name if shard is None else f"{name}[{shard}]"] = found
    assert undeclared == {}


def test_the_check_sees_a_read_the_declaration_leaves_out(trained_root):
    """A stage added later that reads the dataset without covering merge (or declaring it an input)."""
    config, _ = trained_root
    root = open_storage(config.root)
    careless = Stage("careless", "tests:none", STAGES["train"].result, "careless", photos=False)
    reads = {"root": {f"{catalog.DATASET}.parquet", "careless/state.json"}, "source": set()}
    assert undeclared_reads(careless, config, root, load_manifest(root), None, reads) == [
        f"{catalog.DATASET}.parquet"]
    careful = Stage("careful", "tests:none", STAGES["train"].result, "careful", covers=("merge",), photos=False)
    assert undeclared_reads(careful, config, root, load_manifest(root), None, reads | {"root": {
        f"{catalog.DATASET}.parquet"}}) == []
