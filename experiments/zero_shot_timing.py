"""What scoring each shared context once saves: one model scored zero-shot twice on the same documents,
with ``runtime.zero_shot_shared_context`` off (lm-eval's own path) and on.

    python -m experiments.zero_shot_timing                                  # SmolLM2-135M, 8 tasks, first 40 documents each
    python -m experiments.zero_shot_timing --model gemma3-270m --limit 20 --out outputs/zero_shot_timing.json
    python -m experiments.zero_shot_timing --num-fewshot 5 --tasks arc_easy,hellaswag,piqa --limit 20

The JSON gives per run the wall-clock seconds and the per-task accuracies, the share of tokens the
shared path ran, the largest log-likelihood difference of its check against lm-eval, and per task how
many documents' predictions differ between the two runs (float rounding can flip a near tie; 0
expected). Run it alone on the machine: two torch jobs on the same cores slow each other down.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pruning.results import git_info, utc_now, versions, write_json_atomic

TASKS = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa"]


def compare(model_name: str, limit: int, tasks: list[str], num_fewshot: int = 0, logits_gb: float = 4.0) -> dict:
    """Score the dense ``model_name`` on the first ``limit`` documents of ``tasks``, without and with
    shared contexts; the record of both runs."""
    from pruning.api import conf_node
    from pruning.evaluation.zero_shot import evaluate_zero_shot
    from pruning.models import load_model

    loaded = load_model(conf_node("model", model_name))
    zs = {"tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, "batch_size": 32, "seed": 0}
    data = {"root": None, "verify_checksums": False}  # the default data root (PRUNING_DATA_ROOT or ../shared/data)
    runs = {}
    for share in (True, False):  # lm-eval's path second: what the first run warmed up favours it
        out = evaluate_zero_shot(loaded.model, loaded.tokenizer, zs, data, logits_gb=logits_gb, share_context=share)
        runs["shared" if share else "lm_eval"] = out
    plain, shared = runs["lm_eval"], runs["shared"]
    differing = {t: sum(a != b for a, b in zip(plain["samples"][t]["pred"], shared["samples"][t]["pred"]))
                 for t in tasks}
    return {
        "model": model_name, "limit": limit, "tasks": tasks, "num_fewshot": num_fewshot, "logits_gb": logits_gb,
        "seconds": {k: r["seconds"] for k, r in runs.items()},
        "speedup": round(plain["seconds"] / shared["seconds"], 3),
        "acc": {k: {t: r["tasks"][t].get("acc") for t in tasks} for k, r in runs.items()},
        "mean_acc": {k: r["mean_acc"] for k, r in runs.items()},
        "predictions_differing": differing,
        "shared_context": shared["config"]["shared_context"],
        "versions": versions(), "git": git_info(), "time": utc_now(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model name (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=40, help="first N documents of each task (default: %(default)s)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated lm-eval tasks (default: the 8)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="examples in each context (default: %(default)s)")
    parser.add_argument("--out", default="outputs/zero_shot_timing.json", help="JSON to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error(f"--limit={args.limit}: need an integer >= 1")
    if args.num_fewshot < 0:
        parser.error(f"--num-fewshot={args.num_fewshot}: need an integer >= 0")
    logging.basicConfig(level=logging.WARNING)
    result = compare(args.model, args.limit, [t for t in args.tasks.split(",") if t], args.num_fewshot)
    write_json_atomic(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("seconds", "speedup", "mean_acc", "predictions_differing",
                                               "shared_context")}, indent=1))


if __name__ == "__main__":
    main()
