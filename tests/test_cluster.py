"""Multi-node, simulated: two Ray nodes, one declaring a GPU that torch cannot see."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_workers_spread_over_nodes_and_an_invisible_gpu_falls_back_to_cpu(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from rcnas.distributed.service import start_service

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert ray.cluster_resources().get("GPU") == 1
        svc = start_service(tmp_path / "run", n_workers=1, n_cpu_workers=1, cache_dir=tmp_path / "cache",
                            name="svc-cluster")
        placement = ray.get(svc.placement.remote(), timeout=120)
        assert len(placement) == 2
        assert len({p["node_id"] for p in placement}) == 2, "one worker on each node"
        (gpu,) = [p for p in placement if p["gpu_ids"]]
        assert gpu["device"] == "cpu"
        assert any("cannot see" in w for w in gpu["warnings"])
        (cpu,) = [p for p in placement if not p["gpu_ids"]]
        assert cpu["device"] == "cpu" and not cpu["warnings"]
    finally:
        ray.shutdown()
        cluster.shutdown()
