"""The job: result record fields, atomic writes, skip/force, failed records."""

import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from pruning.errors import ConfigError, DataError
from pruning.pipeline import run_job
from pruning.results import config_hash, read_record, write_json_atomic
from tests.conftest import compose_cfg, tiny_overrides


def test_dense_job_writes_complete_record(tiny_data_root, tmp_path):
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root))
    rec = run_job(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    assert rec["status"] == "complete" and len(rec["config_hash"]) == 16
    for key in ("torch", "transformers", "datasets", "lm_eval", "package", "git"):
        assert key in rec["versions"]
    assert rec["model"]["family"] == "llama" and rec["model"]["n_params"] > 0
    assert rec["sparsity"]["target"]["kind"] == "dense" and rec["sparsity"]["actual"] < 0.01
    ppl = rec["metrics"]["perplexity"]["wikitext2"]
    assert ppl["nwindows"] == 4 and ppl["seqlen"] == 64 and ppl["data"]["source"] == "local"
    assert rec["protocol"]["name"] == "quick" and rec["protocol"]["calibration"]["used"] is False
    assert rec["memory"]["peak_rss_bytes"] > 0 and rec["timings"]["total_s"] > 0
    assert rec["memory"]["peak_scope"] == "job"
    assert (tmp_path / "config.resolved.yaml").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_the_record_states_the_thread_count_the_job_ran_with(tiny_data_root, tmp_path):
    before = torch.get_num_threads()
    try:
        rec = run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root) + ["runtime.threads=1"]), tmp_path)
    finally:
        torch.set_num_threads(before)
    assert rec["job"]["torch_threads"] == 1 and rec["versions"]["torch_threads"] == 1


def test_complete_job_is_skipped_unless_forced(tiny_data_root, tmp_path):
    cfg = compose_cfg(tiny_overrides("tiny-opt", tiny_data_root))
    first = run_job(cfg, tmp_path)
    again = run_job(cfg, tmp_path)
    assert again["job"]["started"] == first["job"]["started"]  # the record was not rewritten
    forced = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "force=true")), tmp_path)
    assert forced["config_hash"] == first["config_hash"]  # force does not change the hash
    assert read_record(tmp_path / "results.json")["job"]["started"] == forced["job"]["started"]


def test_a_forced_rerun_that_fails_keeps_the_complete_record_and_its_samples(tiny_data_root, tmp_path, monkeypatch):
    import pruning.pipeline as pipeline

    zs = ("eval=zeroshot", "eval.zero_shot.tasks=[piqa]", "eval.zero_shot.limit=2")
    first = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, *zs)), tmp_path)
    samples = (tmp_path / "zero_shot_samples.json").read_text()

    def broken(*args, **kwargs):  # the last step before the record: after the zero-shot evaluation
        raise RuntimeError("sparsity check broke")

    monkeypatch.setattr(pipeline, "measure_stored_sparsity", broken)
    with pytest.raises(RuntimeError, match="sparsity check broke"):
        run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, *zs, "force=true")), tmp_path)
    kept = read_record(tmp_path / "results.json")
    assert kept["status"] == "complete" and kept["job"]["started"] == first["job"]["started"]
    assert (tmp_path / "zero_shot_samples.json").read_text() == samples  # the samples of the record that stays
    failed = read_record(tmp_path / "results.failed.json")
    assert failed["status"] == "failed" and "sparsity check broke" in failed["error"]
    assert failed["config_hash"] == first["config_hash"]


def test_another_config_gets_its_own_directory_and_resumes_there(tiny_data_root, tmp_path):
    job = tmp_path / "job"
    first = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), job)
    before = (job / "results.json").read_bytes()
    other = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "seed=1")), job)
    sibling = tmp_path / f"job@{other['config_hash'][:8]}"
    assert other["config_hash"] != first["config_hash"] and other["job"]["output_dir"] == str(sibling.resolve())
    assert (job / "results.json").read_bytes() == before  # the first config's record is untouched
    assert read_record(sibling / "results.json")["status"] == "complete"
    again = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "seed=1")), job)
    assert again["job"]["started"] == other["job"]["started"]  # found in its own directory: skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["job", sibling.name])


def test_failed_job_writes_failed_record(tmp_path):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    cfg = compose_cfg(tiny_overrides("tiny-llama", empty, "data.source=local"))
    with pytest.raises(DataError):
        run_job(cfg, tmp_path / "job")
    rec = read_record(tmp_path / "job" / "results.json")
    assert rec["status"] == "failed" and "DataError" in rec["error"] and "Traceback" in rec["traceback"]
    # a failed record does not count as complete: the re-run runs (and fails again here)
    with pytest.raises(DataError):
        run_job(cfg, tmp_path / "job")


@pytest.mark.parametrize("override, match", [("sparsity=abc", "sparsity='abc'"),
                                             ("method.name=obs", "method.name='obs'"),
                                             ("eval.perplexity.datasets=[wikitext3]", "unknown dataset 'wikitext3'"),
                                             ("eval.perplexity.seqlen=4096", "exceeds max_position_embeddings")])
def test_bad_inputs_fail_before_heavy_work(tiny_data_root, tmp_path, override, match):
    overrides = tiny_overrides("tiny-opt", tiny_data_root)
    if override.startswith("sparsity"):
        overrides.append("method.name=dense")
    overrides = [o for o in overrides if not o.startswith(override.split("=")[0] + "=")] + [override]
    with pytest.raises(ConfigError, match=match):
        run_job(compose_cfg(overrides), tmp_path)


def test_sparsity_validated_even_for_dense(tiny_data_root, tmp_path):
    with pytest.raises(ConfigError, match="sparsity='5:4'"):
        run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "sparsity='5:4'")), tmp_path)


def test_config_hash_ignores_bookkeeping_keys():
    base = {"model": {"name": "m", "device": "cpu"}, "seed": 0, "force": False, "logger": {"backend": "wandb"}}
    same = {"model": {"name": "m", "device": "cuda"}, "seed": 0, "force": True, "logger": {"backend": "none"}}
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash({**base, "seed": 1})


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["results.json"]
    write_json_atomic(path, {"ppl": float("nan"), "x": [float("inf")]})  # JSON has no NaN: null
    assert json.loads(path.read_text()) == {"ppl": None, "x": [None]}
    old = os.umask(0o022)
    try:
        assert oct(write_json_atomic(path, {"a": 2}).stat().st_mode & 0o777) == oct(0o644)  # not mkstemp's 0600
    finally:
        os.umask(old)


def test_peak_memory_is_per_job():
    import torch
    from pruning.results import peak_memory, reset_peak_memory
    big = torch.ones(64 * 2**20)  # 256 MiB
    del big
    high = peak_memory()["peak_rss_bytes"]
    assert reset_peak_memory() == "job"
    assert peak_memory()["peak_rss_bytes"] < high - 200 * 2**20


def test_dense_hash_ignores_sparsity_and_calibration():
    dense = {"method": {"name": "dense"}, "sparsity": 0.5, "calibration": {"dataset": "c4"}, "seed": 0}
    assert config_hash(dense) == config_hash({**dense, "sparsity": "2:4", "calibration": {"dataset": "ptb"}})
    pruned = {**dense, "method": {"name": "apt"}}
    assert config_hash(pruned) != config_hash({**pruned, "sparsity": "2:4"})


def test_dense_job_of_a_sparsity_sweep_runs_once(tiny_data_root, tmp_path):
    first = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "sparsity=0.5")), tmp_path)
    before = (tmp_path / "results.json").read_bytes()
    again = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root, "sparsity=2:4")), tmp_path)
    assert again["config_hash"] == first["config_hash"]
    assert (tmp_path / "results.json").read_bytes() == before  # skipped: neither re-run nor refused


def _hold_lock(directory, chash):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pruning.results import job_lock\n"
        f"with job_lock({str(directory)!r}, {chash!r}):\n"
        "    print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_same_config_twice_in_one_live_directory_stops_and_names_the_other(tiny_data_root, tmp_path):
    """Two writers of one config, one directory: the second stops at once (no model load)."""
    import time

    from pruning.results import JobCollision, config_hash

    cfg = compose_cfg(tiny_overrides("tiny-opt", tiny_data_root))
    chash = config_hash(OmegaConf.to_container(cfg, resolve=True))
    holder = _hold_lock(tmp_path / "job", chash)
    try:
        t0 = time.perf_counter()
        with pytest.raises(JobCollision, match=rf"in use by another running job \(.*\"pid\": {holder.pid}.*{chash}"):
            run_job(cfg, tmp_path / "job")
        assert time.perf_counter() - t0 < 5 and not (tmp_path / "job" / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    rec = run_job(cfg, tmp_path / "job")  # the kernel dropped the lock
    assert rec["status"] == "complete" and rec["job"]["output_dir"] == str((tmp_path / "job").resolve())


def test_a_job_of_another_config_next_to_a_live_job_moves_to_its_own_directory(tiny_data_root, tmp_path):
    holder = _hold_lock(tmp_path / "job", "holder-hash")
    try:
        rec = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), tmp_path / "job")
    finally:
        holder.kill()
        holder.wait()
    own = tmp_path / f"job@{rec['config_hash'][:8]}"
    assert rec["status"] == "complete" and rec["job"]["output_dir"] == str(own.resolve())
    assert not (tmp_path / "job" / "results.json").exists()


def test_record_of_another_config_written_meanwhile_is_not_overwritten(tiny_data_root, tmp_path, monkeypatch):
    """The refuse-another-config check runs again right before the record is written."""
    import pruning.pipeline as pipeline

    other = {"status": "complete", "config_hash": "someone-else"}
    real = pipeline.evaluate_perplexity

    def evaluate_then_collide(*args, **kwargs):
        out = real(*args, **kwargs)
        (tmp_path / "results.json").write_text(json.dumps(other))  # a writer that ignores the lock
        return out

    monkeypatch.setattr(pipeline, "evaluate_perplexity", evaluate_then_collide)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == other


def test_a_record_that_is_not_an_object_counts_as_incomplete(tiny_data_root, tmp_path, caplog):
    (tmp_path / "results.json").write_text("[1, 2]")
    rec = run_job(compose_cfg(tiny_overrides("tiny-opt", tiny_data_root)), tmp_path)
    assert rec["status"] == "complete" and "is not a readable result record (JSON list, not an object)" in caplog.text
    aside = list(tmp_path.glob("results.unreadable-*.json"))  # moved aside, never deleted
    assert len(aside) == 1 and aside[0].read_text() == "[1, 2]" and aside[0].name in caplog.text


def test_written_records_follow_the_schema_and_the_docs_list_every_field(tiny_data_root, tmp_path):
    from pruning.record import FIELDS, check_record
    from tests.conftest import REPO

    for extra in (["method=dense"], ["method=wanda", "save.enabled=true", "calibration.nsamples=4",
                                     "calibration.seqlen=32"]):
        rec = run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, *extra)), tmp_path / extra[0])
        assert check_record(json.loads((tmp_path / extra[0] / "results.json").read_text())) == [], extra
    assert check_record({**rec, "surprise": 1}) == ["unknown field 'surprise'"]
    assert "missing field 'metrics'" in check_record({k: v for k, v in rec.items() if k != "metrics"})
    docs = (REPO / "docs" / "results.md").read_text()
    undocumented = [k for k in FIELDS if not any(f"`{k}{end}" in docs for end in "`.: ")]
    assert not undocumented, undocumented


def test_stale_records_are_rerun_and_left_out_of_tables(tiny_data_root, tmp_path, caplog):
    """A Gemma-3 record from before engine revision 2 (block 0's arguments for every block) is moved aside
    and its job re-run; the same record of another family, or of a job without calibration, is kept."""
    from analysis.collect import collect
    from pruning.record import ENGINE_REVISION, stale_reason
    calib = ["calibration.nsamples=2", "calibration.seqlen=32"]
    cfg = compose_cfg(tiny_overrides("tiny-gemma3", tiny_data_root, "method=sparsegpt", "sparsity=0.5", *calib))
    job = tmp_path / "gemma" / "job"
    first = run_job(cfg, job)
    assert first["versions"]["engine_revision"] == ENGINE_REVISION and first["model"]["family"] == "gemma3"
    assert stale_reason(first) is None and run_job(cfg, job)["job"]["started"] == first["job"]["started"]
    engine = first["protocol"]["engine"]
    assert engine["block_kwargs"] == "per_block" and engine["replay_max_rel_diff"] < 1e-4
    old = json.loads(json.dumps(first))
    del old["versions"]["engine_revision"]  # as written before the field existed
    write_json_atomic(job / "results.json", old)
    assert "rotary embeddings" in stale_reason(old)
    col = collect(tmp_path / "gemma")
    assert col.frame.empty and col.skipped[0]["status"] == "stale"
    again = run_job(cfg, job)
    assert again["versions"]["engine_revision"] == ENGINE_REVISION and "is stale" in caplog.text  # re-run
    assert read_record(job / "results.stale.json") == old  # moved aside, not lost
    assert len(collect(tmp_path / "gemma").frame) == 1
    for family, used in (("llama", True), ("gemma3", False)):
        other = json.loads(json.dumps(old))
        other["model"]["family"] = family
        other["protocol"]["calibration"]["used"] = used
        assert stale_reason(other) is None


def test_check_record_checks_each_typed_section(tiny_data_root, tmp_path):
    from pruning.record import check_record
    rec = run_job(compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=wanda", "calibration.nsamples=4",
                                             "calibration.seqlen=32")), tmp_path)
    assert check_record(rec) == []
    broken = json.loads(json.dumps(rec))
    broken["timings"]["total_s"] = "fast"
    broken["metrics"]["surprise"] = 1
    broken["metrics"]["perplexity"]["wikitext2"].pop("nll")
    broken["layers"][0].pop("name")
    broken["layers"][1]["damp_tries"] = 3  # a solver's own diagnostic: allowed
    broken["job"]["torch_threads"] = 2.5
    problems = check_record(broken)
    assert any(p.startswith("timings.total_s: str 'fast'") for p in problems), problems
    assert "metrics: unknown key 'surprise'" in problems
    assert "metrics.perplexity.wikitext2: missing key 'nll'" in problems
    assert "layers[0]: missing key 'name'" in problems and not any("layers[1]" in p for p in problems)
    assert any(p.startswith("job.torch_threads: float 2.5") for p in problems)
    assert len(problems) == 5, problems
