"""The ``mscluster`` command: the top layer, above launcher/ and trainer/, which it only parses for and prints.

`main` (the parser, exit codes), `jobs` (plan, ranktable, launch, submit, cancel), `monitor` (status,
logs, tensorboard), `device` (train, eval, predict: what runs on a device). Nothing below imports it.
"""
