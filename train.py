"""Search a robust sub-network with the meta-RL PPO agent (RC-NAS, KDD 2024), on Ray.

This script:
    - starts the evaluation service (Ray actors: a GPU each when the cluster has GPUs, CPUs otherwise) with the
      run's evaluation store under --out;
    - meta-trains one PPO policy (stage encoder: BiLSTM over stages + LIPS, cost and task features) across the
      experiment's task settings, as a Ray Tune experiment (TensorBoard events, progress.csv, checkpoints);
    - fine-tunes it on the held-out target task (--task), starting from the meta-trained weights (--from);
    - writes the best sub-network as <DATASET>/RL_<budget>.yaml (RobustResNet schema), its metrics and report.md
      with plots; then trains it from scratch and attacks it on the test split next to the teacher and a uniformly
      shrunk teacher of the same budget (one comparison table).

How to run:
    python train.py                                   # the embedded default: digits, CPU, minutes
    python train.py --task configs/tasks/digits-cw-e20-t444-r30.yaml --M 5 --from <meta checkpoint in summary.json>
    python train.py --experiment configs/experiments/cifar10.yaml --out /shared/runs/cifar10   # on a GPU cluster
    python train.py --resume                          # continue an interrupted run (Tune + the evaluation store)
    python train.py --smoke-test / --no-tune          # a minute-long run for CI / a plain algo.train() loop
    python train.py --searcher evolution --n 25       # a baseline on the same service, store and budget wall

Results to expect:
    under --out: summary.json, report.md, reward.png, candidates.png, topology.png, DIGITS/RL_<budget>.yaml,
    final/comparison.txt; Tune experiments in --out/tune (tensorboard --logdir <out>/tune).
"""

from __future__ import annotations

import argparse
import sys

from rcnas.infra.cli import run_main
from rcnas.search.searchers import searcher_names


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="configs/experiments/digits.yaml", help="experiment YAML")
    p.add_argument("--task", help="target task YAML (overrides the experiment's target_task)")
    p.add_argument("--M", type=int, help="sub-networks sampled per policy update")
    p.add_argument("--from", dest="from_checkpoint", help="meta-trained checkpoint: skip meta-training")
    p.add_argument("--seed", type=int, help="the experiment's seed (PPO, baselines, final training)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment key (ppo.lr=0.001, M=3) or task key for every task "
                        "(training.epochs=2, proxy.epochs=0.5); repeatable")
    p.add_argument("--searcher", default="rl", choices=searcher_names(),
                   help="rl (meta-train + fine-tune, default), ppo-scratch, or a baseline on the same service")
    p.add_argument("--n", type=int, default=25, help="evaluations a baseline searcher may spend")
    p.add_argument("--out", help="run folder (default runs/<experiment name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-tune", action="store_true", help="plain algo.train() loops instead of Tune")
    p.add_argument("--no-final-eval", action="store_true", help="stop after the search report")
    p.add_argument("--data-root", help="dataset folder, or a URI (s3://, gs://, file://) copied once per node "
                   "into its cache; passed to every worker (default $RCNAS_DATA or ./data)")
    p.add_argument("--storage", help="a URI that keeps the run beyond this machine (s3://..., gs://..., file://...): "
                   "Tune writes there, the run folder is copied there after each phase, --resume pulls it back")
    p.add_argument("--ray-address", help="an existing Ray cluster (default $RAY_ADDRESS or a local one)")
    p.add_argument("--allow-pending-workers", action="store_true",
                   help="start even when the experiment's workers ask for GPUs no node has (they wait for one)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="restore a --from checkpoint or --resume experiment that your key did not sign (RLlib/Tune "
                        "checkpoints are pickles: only ones whose origin you trust)")
    p.add_argument("--verbose", action="store_true",
                   help="Tune's status tables and config dump, and the libraries' known-harmless warnings")
    p.add_argument("--smoke-test", action="store_true", help="every phase, tiny settings (experiments/smoke.yaml)")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.experiment = "configs/experiments/smoke.yaml"
    return args


def main() -> int:
    args = parse(sys.argv[1:])
    from agents.pipeline import run_pipeline

    return run_pipeline(args, sys.argv[1:])


if __name__ == "__main__":
    run_main(main)
