"""Sweeps: a grid of sbvae-train runs from one YAML file, trained group by group and scored with sbvae-eval.

``spec`` reads and expands sweep files, ``state`` tells what each run folder holds, ``commands`` builds the
sbvae-train / sbvae-eval command lines, ``runner`` executes them, ``estimate`` prices a sweep in device
time and ``slurm`` writes an sbatch array script.
"""
