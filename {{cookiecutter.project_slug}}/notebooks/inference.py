# %% [markdown]
# # Offline inference: packaged models -> submission.csv
#
# The kernel of a code competition runs with the internet off, so everything comes from the upload dataset that
# `python -m <package> upload --exps ...` built: the package's source (`src/<package>/`) and, per experiment, its
# fold checkpoints and resolved config. Kaggle's image has torch, timm, albumentations... installed, so nothing is
# pip-installed: `src/` goes on `sys.path`. Each experiment predicts the test images with its fold models x TTA
# views (an ensemble recomputes its members and blends them with its weights), several experiments are averaged,
# and the package's own submission code writes `submission.csv`, validated against `sample_submission.csv`.
#
# This file is the notebook's single source (percent format: `jupytext --to ipynb` opens it as a notebook) and is
# pushed as a script kernel by `push-notebook`. Settings are environment variables with Kaggle's defaults:
#
# | variable | default |
# | --- | --- |
# | KAGGLE_INPUT | /kaggle/input (where Kaggle mounts the competition and the datasets) |
# | INFER_DATASET_DIR | the dataset under /kaggle/input that holds `src/<package>/kaggle/offline.py` |
# | INFER_DATA_DIR | /kaggle/input/<competition> (the `competition` of the packaged config) |
# | INFER_WORK_DIR | /kaggle/working (where submission.csv must be) |
# | INFER_EXPERIMENTS | every experiment the dataset packaged (space or comma separated names) |
# | INFER_OVERRIDES | none; config overrides, e.g. `tta.batch_size=128 data.num_workers=4` |
#
# Each experiment predicts as `predict` did at home, as its decisions.json records: the same TTA views and merge, in
# the same runtime (torch, or the ONNX fp32 / int8 models `make export` wrote, uploaded with the run: predict locally
# with predict.runtime=onnx before `upload`), and the submission applies the thresholds and cuts tuned there. So the
# submission is the one `make-submission` writes locally, and its CV the one measured; INFER_OVERRIDES may not change
# the decided keys. Kaggle's image may lack onnxruntime: attach its wheel as a dataset and pip-install it offline
# (`pip install --no-index --find-links /kaggle/input/<wheels> onnxruntime`) before the package is imported.

# %%
import importlib
import os
import sys
from pathlib import Path

import pandas as pd

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path("/kaggle/working")
WORK_DIR = Path(os.environ.get("INFER_WORK_DIR") or (KAGGLE_WORKING if KAGGLE_WORKING.is_dir() else Path.cwd()))
EXPERIMENTS = os.environ.get("INFER_EXPERIMENTS", "").replace(",", " ").split()
OVERRIDES = os.environ.get("INFER_OVERRIDES", "").split()
for key, value in {"WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)  # nothing may try the network


# %% [markdown]
# ## The upload dataset, and the package imported from it


# %%
def find_dataset(root: Path) -> Path:
    """The one mounted dataset holding src/<package>/kaggle/offline.py (datasets mount one to three levels down)."""
    if os.environ.get("INFER_DATASET_DIR"):
        return Path(os.environ["INFER_DATASET_DIR"])
    hits = sorted({p.parents[3] for depth in (1, 2, 3) for p in root.glob("*/" * depth + "src/*/kaggle/offline.py")})
    if len(hits) != 1:
        raise SystemExit(f"{len(hits)} upload datasets found under {root} {hits}: set INFER_DATASET_DIR")
    return hits[0]


DATASET_DIR = find_dataset(KAGGLE_INPUT)
PACKAGES = sorted(p.parent.name for p in (DATASET_DIR / "src").glob("*/__init__.py"))
if len(PACKAGES) != 1:
    raise SystemExit(f"{DATASET_DIR / 'src'} must hold exactly one package, found {PACKAGES}")
sys.path.insert(0, str(DATASET_DIR / "src"))
notebook = importlib.import_module(f"{PACKAGES[0]}.kaggle.offline")
print(f"package {PACKAGES[0]} from {Path(notebook.__file__).parents[1]}")

# %% [markdown]
# ## Experiments and the competition's files

# %%
experiments = EXPERIMENTS or notebook.packaged_experiments(DATASET_DIR)
DATA_DIR = Path(os.environ.get("INFER_DATA_DIR") or notebook.find_data_dir(DATASET_DIR, experiments[0], KAGGLE_INPUT))
OUTPUT_DIR = WORK_DIR / "outputs"  # the dataset is read-only: predictions go to a writable stand-in of outputs/
print(f"experiments {experiments}\ndataset {DATASET_DIR}\ncompetition files {DATA_DIR}\nworking dir {WORK_DIR}")

# %% [markdown]
# ## Predict: every fold model x every TTA view, per experiment

# %%
configs = [notebook.predict_packaged(DATASET_DIR, e, DATA_DIR, OUTPUT_DIR, OVERRIDES) for e in experiments]
final = notebook.average(configs[0], experiments)

# %% [markdown]
# ## submission.csv, in the sample submission's format

# %%
submission = notebook.write_submission(configs[0], final, WORK_DIR)
pd.read_csv(submission).head()
