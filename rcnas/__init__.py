"""rcnas: reinforced compressive NAS for adversarial robustness.

The library is import-light on purpose (no torch, no Ray at package import): use the modules directly, e.g.
``rcnas.config.load_task``, ``rcnas.space.space.CompressionSpace``, ``rcnas.models.builder.build_model``,
``rcnas.train.adversarial_train``, ``rcnas.evaluation.robust_accuracy``, ``rcnas.proxy.local.LocalEvaluator``.
Only ``rcnas.distributed`` imports Ray.
"""

__version__ = "0.1.0"
