"""The evaluation service on a simulated cluster (``ray.cluster_utils.Cluster``, every node on this machine):
evaluations per minute with 1 node vs 2 nodes of one CPU worker each, and what shipping a teacher through the object
store costs against training it on the node.

Each node has its own teacher cache (no shared filesystem for it), so on 2 nodes the second node receives the
teacher from the object store. The nodes share this machine's cores, memory bandwidth and disk, so 2 nodes give
less than 2x (and nothing on a machine with fewer free cores than workers).

    python bench/cluster_throughput.py [--evaluations 12] [--proxy-epochs 0.3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

from rcnas.distributed.service import evaluation_service
from rcnas.infra.cli import run_main
from rcnas.proxy.fixtures import tiny_task
from rcnas.proxy.keys import teacher_key


def run(n_nodes: int, n_evals: int, proxy_epochs: float, work: Path) -> dict[str, float]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    caches = [work / f"n{n_nodes}-cache{i}" for i in range(n_nodes)]
    for cache in caches:
        cluster.add_node(num_cpus=1, env_vars={"RCNAS_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        with evaluation_service(work / f"run{n_nodes}", n_workers=n_nodes, name=f"bench-{n_nodes}",
                                worker_spec={"num_cpus": 1}) as client:
            svc = client.handle
            ray.get(svc.placement.remote(), timeout=300)
            task = tiny_task(proxy_epochs=proxy_epochs)
            t0 = time.perf_counter()
            ray.get(svc.teacher_stats.remote(task), timeout=3600)
            teacher_s = time.perf_counter() - t0
            rng, archs = np.random.default_rng(0), {}
            while len(archs) < n_evals:
                arch = task.space.arch(task.space.sample(rng))
                archs[arch.key()] = arch
            t0 = time.perf_counter()
            ray.get([svc.evaluate.remote(task, a) for a in archs.values()], timeout=3600)
            minutes = (time.perf_counter() - t0) / 60
            records = [json.loads((c / "teachers" / teacher_key(task) / "train.json").read_text())
                       for c in caches if (c / "teachers" / teacher_key(task) / "train.json").is_file()]
            size = sum(p.stat().st_size for p in (caches[0] / "teachers" / teacher_key(task)).glob("model.pt"))
            return {"nodes": n_nodes, "evals_per_min": n_evals / minutes, "teacher_s": teacher_s,
                    "trained_on_nodes": sum("received" not in r for r in records),
                    "received_on_nodes": sum("received" in r for r in records), "teacher_bytes": size}
    finally:
        ray.shutdown()
        cluster.shutdown()


def ship_cost(work: Path) -> dict[str, float]:
    """Seconds to put a teacher's state dict into the object store and get it on another node, against training."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"other": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        import torch

        from rcnas.models.builder import build_model

        task = tiny_task()
        state = build_model(task.teacher.arch, task.shape).state_dict()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())

        @ray.remote(resources={"other": 1}, num_cpus=0)
        def fetch(refs: list) -> float:
            t0 = time.perf_counter()
            got = ray.get(refs[0])
            torch.save(got, Path(tempfile.mkdtemp()) / "model.pt")  # as the worker installs it in its cache
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        ref = ray.put(state)
        put_s = time.perf_counter() - t0
        get_s = ray.get(fetch.remote([ref]))
        return {"state_bytes": nbytes, "put_s": put_s, "fetch_and_install_s": get_s}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluations", type=int, default=12)
    p.add_argument("--proxy-epochs", type=float, default=0.3)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rcnas-cluster-"))
    rows = [run(n, a.evaluations, a.proxy_epochs, work) for n in (1, 2)]
    ship = ship_cost(work)
    for r in rows:
        print(f"{r['nodes']} node(s) x 1 CPU worker: {r['evals_per_min']:.1f} evaluations/min "
              f"({a.evaluations} distinct sub-networks of the tiny digits task); teacher trained on "
              f"{r['trained_on_nodes']} node(s), received on {r['received_on_nodes']} ({r['teacher_s']:.1f} s to the "
              "first statistics)")
    print(f"ratio 2 nodes / 1 node: {rows[1]['evals_per_min'] / rows[0]['evals_per_min']:.2f}")
    print(f"shipping the teacher ({ship['state_bytes'] / 1e6:.2f} MB of tensors): put {ship['put_s'] * 1e3:.0f} ms, "
          f"fetch on the other node + write to its cache {ship['fetch_and_install_s'] * 1e3:.0f} ms; training it "
          f"there instead: {rows[0]['teacher_s']:.1f} s")


if __name__ == "__main__":
    run_main(main)
