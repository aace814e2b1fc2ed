"""The only Ray code in rcnas: evaluation on Ray workers, pinned to GPUs when the cluster has them."""
