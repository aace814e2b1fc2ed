"""Evaluate saved sub-network configs the way robustness papers report them.

This script:
    - trains each sub-network (RobustResNet YAML schema) from scratch with the task's adversarial training recipe,
      or loads ``--checkpoint``; the kept epoch is chosen on validation PGD accuracy, never on the test split;
    - attacks it on the test split: clean, FGSM, PGD-20, CW-40, AutoAttack (standard, or ``aa_compact``);
    - reports params, MACs, the local Lipschitz estimate, eps as k/255, n examples, seed and wall time;
    - evaluates several configs in parallel on Ray workers (a GPU each when the cluster has GPUs).

How to run:
    python evaluate.py configs/subnets/digits/tiny-444-half.yaml --task configs/tasks/digits-pgd-e20-t444-r35.yaml
    python evaluate.py A.yaml B.yaml --task T.yaml --epochs 5 --attacks clean,pgd20,aa_compact --n-examples 200
    python evaluate.py --teacher --task my-published-teacher.yaml           # a published checkpoint, as imported
    python evaluate.py configs/subnets/cifar10/WRN-A1.yaml --profile        # params and MACs as JSON, no training
    python evaluate.py RL_5G.yaml --task T.yaml --attacks clean,aa --export robustbench exported/   # for RobustBench
    python evaluate.py --smoke-test                                          # seconds, for CI

Results to expect:
    a table on stdout; ``results.json``, ``results.md``, the trained weights and the resolved task under ``--out``.
    Robust accuracies are <= clean, and the worst case is <= every single attack.
"""

from __future__ import annotations

import argparse
import sys

from rcnas.infra.cli import run_main

SMOKE = ["configs/subnets/digits/tiny-444-half.yaml", "--task", "configs/tasks/digits-pgd-e20-t444-r35.yaml",
         "--epochs", "1", "--n-examples", "64", "--attacks", "clean,fgsm,pgd20,cw40,aa_compact"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="sub-network YAML files (RobustResNet schema)")
    p.add_argument("--task", help="task YAML: dataset, attack epsilon, training recipe")
    p.add_argument("--attacks", default="clean,fgsm,pgd20,cw40,aa",
                   help="comma-separated: clean, fgsm, pgd20, cw40, aa (standard AutoAttack), aa_compact")
    p.add_argument("--epochs", type=float, help="override the recipe's training length")
    p.add_argument("--checkpoint", help="load these weights instead of training (one config only)")
    p.add_argument("--teacher", action="store_true",
                   help="evaluate the task's teacher as imported from its teacher_weights (no training, no config)")
    p.add_argument("--export", nargs=2, metavar=("FORMAT", "DIR"),
                   help="also export each network: 'robustbench DIR' writes weights loadable into RobustBench's "
                        "class, model_info.json and a model card per network under DIR")
    p.add_argument("--data-parallel", type=int, default=1, metavar="N",
                   help="train each network on N data-parallel workers (Ray Train: a GPU each when the cluster has "
                        "N GPUs, else CPU processes); for large networks")
    p.add_argument("--n-examples", type=int, help="attack only the first N test examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default runs/eval/<time>)")
    p.add_argument("--data-root", help="dataset folder, or a URI (s3://, gs://, file://) copied once per node "
                   "into its cache (default $RCNAS_DATA or ./data)")
    p.add_argument("--profile", action="store_true", help="print params and MACs as JSON and exit")
    p.add_argument("--no-ray", action="store_true", help="evaluate several configs one by one in this process")
    p.add_argument("--ray-address", help="an existing Ray cluster (default $RAY_ADDRESS or a local one)")
    p.add_argument("--smoke-test", action="store_true", help="a seconds-long run on the digits default")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.smoke_test:  # the smoke settings first, so that flags given on the command line win
        args = p.parse_args(SMOKE + [a for a in argv if a != "--smoke-test"])
    if args.export and args.export[0] != "robustbench":
        p.error(f"--export {args.export[0]}: the export format is robustbench")
    if not args.configs and not args.teacher:
        p.error("give at least one sub-network config (or --teacher, or --smoke-test)")
    return args


def main() -> int:
    from rcnas.evaluation.command import evaluate
    from rcnas.evaluation.tables import text_table

    a = parse()
    results = evaluate(a.configs, a.task, attacks=a.attacks, epochs=a.epochs, checkpoint=a.checkpoint,
                       teacher=a.teacher, n_examples=a.n_examples, seed=a.seed, out=a.out, data_root=a.data_root,
                       no_ray=a.no_ray, ray_address=a.ray_address, export_robustbench=a.export[1] if a.export else None,
                       data_parallel=a.data_parallel, profile=a.profile)
    if results:
        print(text_table(results))
    return 0


if __name__ == "__main__":
    run_main(main)
