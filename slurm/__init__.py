"""SLURM submission of ablation cells through submitit: cluster profiles and the executor."""
