"""Trainers that the deploy service ships to a pod (or a local working directory) and runs.

The service copies this package's `__init__.py` and `common.py`, and the module of the trainer
that the run uses, into the pod's work directory as `tunelab_trainer/`, and runs it from there
as a module: `python -m tunelab_trainer.tiny config.json` (or `tunelab_trainer.trl_train`). So
the package imports nothing here, and each trainer imports only the standard library, its ML
libraries and `tunelab_trainer.common` (standard library only), never the rest of this
repository:

- `tiny.py`: a small byte-level language model in numpy, trained on the CPU in seconds; the
  local provider's trainer (base model "tiny").
- `trl_train.py`: LoRA fine-tuning of a Hugging Face model with TRL (SFT or DPO) on a GPU pod.
- `common.py`: what both share: config.json and its checks, reading the dataset's rows, the
  progress line and the error line with its exit status.

Both read the same config.json and print the same `TUNELAB_PROGRESS {json}` lines on stdout.
"""
