"""The dynamic cluster's scheduler process: ``python -m trainer.scheduler``.

MindSpore's dynamic cluster needs one process with ``MS_ROLE=MS_SCHED`` that the workers register
with; it serves them inside ``mindspore.communication.init()`` and exits when they are done.
The launcher runs this small program for it whatever the ranks run (the built-in trainer or a
user's ``command:``), so a user's program never has to know about the scheduler role.
"""
from __future__ import annotations

import sys


def main() -> int:
    from mscluster.rank import rank_info, record

    @record
    def serve() -> None:
        info = rank_info()
        if not info.is_scheduler:
            raise SystemExit("trainer.scheduler: MS_ROLE=MS_SCHED is not set: this is the dynamic cluster's "
                             "scheduler, started by mscluster launch")
        from trainer.cpu import configure_cpu_backend

        configure_cpu_backend()
        import mindspore as ms
        from mindspore.communication import init

        ms.set_context(device_target=info.device_target)
        init()

    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
