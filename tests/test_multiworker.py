"""`--strategy multiworker`, exercised: two worker processes on 127.0.0.1 train the same tiny model as a
single-worker run with the same global batch, and end with the same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

DRIVER = Path(__file__).with_name("multiworker_worker.py")
DEADLINE_S = 540  # every process together; a worker whose peer died blocks in a collective, so this bounds it
# Why 1e-5: the weights are float32 of magnitude <= 1. The split run sums the same gradients in another order
# (two per-replica batches of 4 plus an all-reduce, against one batch of 8; other conv blockings), which moves a
# value by float32 rounding, ~1e-7 relative per step; over 8 SGD steps that stays far below 1e-5 (~100 ulps of
# 1.0; measured: 1.5e-8). A real fault is far above it: another data order moves the weights by 8.6e-3,
# BatchNormalization on per-replica statistics by 1.0e-2 (both measured with this driver), and the training
# itself moves them by 2.7e-2. Hence the checks below: moved > 100 * ATOL, difference <= ATOL.
ATOL = 1e-5


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2",
               OMP_NUM_THREADS="1", TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _start(tmp: Path, name: str, strategy: str, env: dict) -> tuple[subprocess.Popen, Path, Path]:
    out, log = tmp / f"{name}.npz", tmp / f"{name}.log"
    with open(log, "wb") as fh:  # to a file, not a pipe: a full pipe would block the worker
        p = subprocess.Popen([sys.executable, str(DRIVER), "--strategy", strategy, "--out", str(out)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return p, out, log


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its own session: the worker and anything it started
        except ProcessLookupError:
            pass
        p.wait(timeout=30)


def _result(log: Path) -> dict:
    text = log.read_text(errors="replace")
    assert "RESULT" in text, text[-3000:]
    return json.loads(text.rsplit("RESULT", 1)[1].splitlines()[0])


def _weights(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("arr_"))
        return [z[f"arr_{i}"] for i in range(n)], [z[f"init_{i}"] for i in range(n)]


@pytest.mark.slow
def test_two_workers_match_a_single_worker_run(tmp_path):
    """Two MultiWorkerMirroredStrategy workers (get_strategy("multiworker"), TF_CONFIG on free 127.0.0.1 ports)
    and one default-strategy process train tiny_model (32 px, 32 images, global batch 8, 2 epochs = 8 steps)
    from make_dataset with a seeded shuffle and no augmentation; dropout off, BatchNormalization frozen (in
    training mode each replica would normalise by its own half-batch, a real and expected difference), SGD.
    The workers shard the data (tf.data auto-shard falls back to DATA: each takes its half of every global
    batch) and all-reduce the gradients, so they must end where one worker with the whole batch ends."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    t0 = time.monotonic()
    try:
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(_start(tmp_path, f"worker{i}", "multiworker", _env(TF_CONFIG=tf_config)))
        procs.append(_start(tmp_path, "single", "default", _env()))
        for p, _, log in procs:
            left = DEADLINE_S - (time.monotonic() - t0)
            try:
                rc = p.wait(timeout=max(1.0, left))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{log.name}: still running after {DEADLINE_S} s\n" + log.read_text(errors="replace")[-3000:])
            assert rc == 0, f"{log.name}: exit {rc}\n" + log.read_text(errors="replace")[-3000:]
    finally:
        for p, _, _ in procs:
            _kill(p)
    wall = time.monotonic() - t0

    res = [_result(log) for _, _, log in procs]
    assert [r["replicas"] for r in res] == [2, 2, 1]
    assert [r["multiworker"] for r in res] == [True, True, False], [r["strategy"] for r in res]
    (w0, _), (w1, _), (ref, init) = (_weights(out) for _, out, _ in procs)
    assert len(w0) == len(ref) == len(init) > 0
    moved = max(float(np.abs(r - i).max()) for r, i in zip(ref, init))
    d_workers = max(float(np.abs(a - b).max()) for a, b in zip(w0, w1))
    d_single = max(float(np.abs(a - b).max()) for a, b in zip(w0, ref))
    print(f"\nmultiworker: max |w - w_single| = {d_single:.3g} (tolerance {ATOL:g}), between workers {d_workers:.3g}, "
          f"training moved weights by up to {moved:.3g}; loss per epoch {res[0]['loss']} vs {res[2]['loss']}; "
          f"worker {res[0]['seconds']} s, single {res[2]['seconds']} s, wall {wall:.0f} s")
    assert moved > 100 * ATOL, "training must move the weights well past the tolerance, or the test proves nothing"
    assert d_workers <= ATOL, "the two workers hold different weights"
    assert d_single <= ATOL, f"two workers differ from one worker with the same global batch by {d_single:.3g}"
    np.testing.assert_allclose(res[0]["loss"], res[2]["loss"], rtol=1e-4)
