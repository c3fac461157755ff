"""``python -m segexp.export``: export a checkpoint to ONNX or TorchScript.

    python -m segexp.export ckpt_path=.../checkpoints/last.ckpt              # ONNX
    python -m segexp.export ckpt_path=... format=torchscript output=model.pt

The export and its parity check are ``segexp.infer.export``; this is its command line.
"""

from __future__ import annotations

from segexp.infer.export import main

if __name__ == "__main__":
    from segexp.run.entry import hydra_entry
    from segexp.run.hydra_help import speed_up_help

    speed_up_help()
    hydra_entry(main)  # Hydra's own config errors exit 2 too
