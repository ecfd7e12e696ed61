"""Evaluation results: metric names, one results row per evaluation, the results files.

One JSON line per evaluation is appended to ``config.eval.results_file`` (default
<workdir>/eval_results.jsonl) and the same row to a CSV next to it (columns RESULT_COLUMNS),
keyed by ``row["key"]``: the hash of the full sampling identity + N + extractor + reference.
Numbers from an extractor that is not the FID Inception (the demo's proxy classifier, random
weights) go to the ``proxy_*`` columns: the same formulas in another feature space, never FID.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time

import jax

METRICS = ("fid", "sfid", "inception_score", "precision", "recall")
PROXY_NAMES = {
    "fid": "proxy_fd",
    "sfid": "proxy_sfd",
    "inception_score": "proxy_score",
    "precision": "proxy_precision",
    "recall": "proxy_recall",
}
RESULT_COLUMNS = (
    "key",
    "time",
    "model",
    "weights",
    "sampler",
    "num_steps",
    "method",
    "cfg_scale",
    "nag_scale",
    "cfg_interval",
    "nag_interval",
    "cfg_channels",
    "seed",
    "num_images",
    "extractor",
    "is_fid_inception",
    "reference",
    *METRICS,
    *PROXY_NAMES.values(),
    "samples",
)


def metric_names(values: dict, is_fid_inception: bool) -> dict:
    """Renames metric keys to PROXY_NAMES unless the values come from the FID Inception."""
    return values if is_fid_inception else {PROXY_NAMES.get(k, k): v for k, v in values.items()}


def digest(obj) -> str:
    """16 hex digits of sha256 over the sorted-key JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def result_row(config, extractor, values: dict, samples_path: str, identity: dict, n: int) -> dict:
    """One results row of ``n`` images; ``key`` hashes ``identity`` (the sampling identity with
    the params fingerprint, or the scored file), N, the extractor and the reference."""
    sc, reference = config.sample, config.eval.reference
    key = digest({**identity, "num_images": n, "extractor": extractor.name, "reference": reference})
    return {
        "key": key,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": config.model.name,
        "weights": identity.get("weights"),
        "sampler": sc.sampler,
        "num_steps": sc.num_steps,
        "method": sc.method,
        "cfg_scale": sc.cfg_scale,
        "nag_scale": sc.nag_scale,
        "cfg_interval": list(sc.cfg_interval),
        "nag_interval": list(sc.nag_interval),
        "cfg_channels": sc.cfg_channels,
        "seed": int(config.seed),
        "num_images": n,
        "extractor": extractor.name,
        "is_fid_inception": extractor.is_fid_inception,
        "reference": reference,
        **{k: None for k in METRICS},
        **metric_names({k: values.get(k) for k in METRICS}, extractor.is_fid_inception),
        "samples": samples_path,
        "sampling_config": identity,
    }


def append_result(path: str, row: dict) -> None:
    """Appends ``row`` to a JSON-lines file and to ``<stem>.csv`` (RESULT_COLUMNS), process 0."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    csv_path = os.path.splitext(path)[0] + ".csv"
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k) for k in RESULT_COLUMNS})


def read_results(path: str) -> list[dict]:
    """The rows of a results JSON-lines file ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
