"""Remove the files of options that are off. Nothing else."""

import shutil
from pathlib import Path

CODE_COMPETITION = "{{ cookiecutter.code_competition }}" == "True"
USE_WANDB = "{{ cookiecutter.use_wandb }}" == "True"

if not CODE_COMPETITION:
    shutil.rmtree("notebooks", ignore_errors=True)
    Path("tests/test_notebook.py").unlink(missing_ok=True)
if not USE_WANDB:
    Path("configs/sweep.yaml").unlink(missing_ok=True)
