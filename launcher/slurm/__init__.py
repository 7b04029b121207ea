"""``scheduler: slurm``: the allocation's nodes are the hosts, and Slurm's ``srun`` starts what SSH would.

One module per job: `allocation` (the Slurm job the launcher runs in, its nodes as hosts), `step`
(the srun executor and the one step of agents, which connect back: `launcher.connect_back`),
`batch` (``mscluster submit``'s sbatch script and the job's state in squeue), and `scheduler` (what
`launcher.hosts` asks of a scheduler: the placed cluster and its executors).
"""
