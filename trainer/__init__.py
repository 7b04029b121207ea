"""The process that runs on every device: data, ResNet, data-parallel training, eval, predict.

Nothing here imports ``launcher``: a device process learns its rank from its environment.
``trainer.config`` and ``trainer.overrides`` import no MindSpore, so the launcher can validate a
cluster file's ``train:`` section on a login node without it.
"""
