"""Evaluation results: metric names, one results row per evaluation, the results files.

One JSON line per evaluation is appended to ``config.eval.results_file`` (default
<workdir>/eval_results.jsonl) and the same row to a CSV next to it (columns RESULT_COLUMNS),
keyed by ``row["key"]``: the hash of the full sampling identity + N + extractor + reference.
Paths may be local or remote (``gs://``; nag_jax.storage.paths).

Torn lines: a local append writes the whole line in one ``write`` and fsyncs it; a file left
ending without a newline (a killed append) gets a newline first, so the next row is never glued
to the torn one. ``read_results`` skips a line that is not a JSON object with one warning naming
the file and the line numbers, and returns every complete row. Remote files (no append on object
stores) are rewritten whole through a temporary object and a rename.

Numbers from an extractor that is not the FID Inception (the demo's proxy classifier, random
weights) go to the ``proxy_*`` columns: the same formulas in another feature space, never FID.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time

import jax
from absl import logging

from nag_jax.storage.paths import as_path, is_remote

METRICS = ("fid", "sfid", "inception_score", "kid", "kid_se", "precision", "recall")
PROXY_NAMES = {
    "fid": "proxy_fd",
    "sfid": "proxy_sfd",
    "inception_score": "proxy_score",
    "kid": "proxy_kid",
    "kid_se": "proxy_kid_se",
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


def _append_text(path, text: str, header: str = "") -> None:
    """Appends ``text`` (whole lines) to ``path``; ``header`` first when the file is new or empty.

    Local: one write, flush and fsync; a missing final newline (a torn last line) is written
    first. Remote: the object is rewritten whole (tmp object + rename)."""
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(p):
        old = p.read_bytes() if p.exists() else b""
        prefix = header if not old else ("" if old.endswith(b"\n") else "\n")
        tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
        tmp.write_bytes(old + (prefix + text).encode())
        tmp.replace(p)
        return
    with open(os.fspath(p), "ab") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            prefix = header
        else:
            with open(os.fspath(p), "rb") as r:
                r.seek(end - 1)
                prefix = "" if r.read(1) == b"\n" else "\n"
        f.write((prefix + text).encode())
        f.flush()
        os.fsync(f.fileno())


def append_result(path: str, row: dict) -> None:
    """Appends ``row`` to a JSON-lines file and to ``<stem>.csv`` (RESULT_COLUMNS), process 0.
    Whole lines, fsynced (module docstring); local or remote paths."""
    if jax.process_index() != 0:
        return
    p = as_path(path)
    _append_text(p, json.dumps(row, sort_keys=True, default=str) + "\n")
    header, line = io.StringIO(), io.StringIO()
    csv.DictWriter(header, fieldnames=RESULT_COLUMNS).writeheader()
    w = csv.DictWriter(line, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    w.writerow({k: row.get(k) for k in RESULT_COLUMNS})
    _append_text(p.with_suffix(".csv"), line.getvalue(), header=header.getvalue())


def read_results(path: str) -> list[dict]:
    """The complete rows of a results JSON-lines file ([] if it does not exist). A line that is
    not a JSON object (torn by a killed write) is skipped with one warning naming the file and
    its line numbers."""
    p = as_path(path)
    if not p.exists():
        return []
    rows, torn = [], []
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            torn.append(number)
    if torn:
        logging.warning(
            "%s: skipped %d unreadable line(s) (line %s: torn by a killed write); read the %d "
            "complete row(s). Delete the line(s) or rerun that evaluation to restore its row.",
            os.fspath(p),
            len(torn),
            ", ".join(map(str, torn[:10])),
            len(rows),
        )
    return rows
