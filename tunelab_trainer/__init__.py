"""Trainers that the deploy service embeds into its bootstrap script and runs as `train.py`.

Each module here is one self-contained file that imports only the standard library and its
ML libraries, never this repository, because the bootstrap script copies it verbatim onto a GPU
pod (or into a local working directory) and runs `python train.py config.json`:

- `tiny.py`: a small byte-level language model in numpy, trained on the CPU in seconds; the
  local provider's trainer (base model "tiny").
- `trl_train.py`: LoRA fine-tuning of a Hugging Face model with TRL (SFT or DPO) on a GPU pod.

Both read the same config.json and print the same `TUNELAB_PROGRESS {json}` lines on stdout.
"""
