"""Train a segmentation model from Hydra config groups.

    python train.py                                   # the default experiment
    python train.py model=deeplabv3plus loss=ce_dice  # pick options per group
    python train.py -m model=unet,fpn                 # a multirun sweep
    python train.py --help                            # groups and options (no torch import)
    python train.py reproduce=outputs/<date>/<time>   # re-run a saved config in a new folder
    python train.py resume=outputs/<date>/<time>      # continue a killed run from last.ckpt

Heavy imports happen inside the functions so that --help and --cfg stay fast.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; write metrics.json; return the final metrics."""
    from pathlib import Path

    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.data.classes import recorded_config, resolve_num_classes
    from segexp.infer.report import print_summary
    from segexp.model.module import build_module
    from segexp.model.pretrained import file_record, init_from_config, use_weights_dir
    from segexp.run.budget import budget_callback
    from segexp.run.checkpoint import check_compatible
    from segexp.run.ranks import is_global_zero
    from segexp.run.recipe import apply_recipe
    from segexp.run.rundir import update_run_info, write_json, write_metadata, write_text
    from segexp.run.validate import check_config

    # data.num_classes: null -> the dataset's own count, before the model reads ${data.num_classes}
    resolve_num_classes(cfg.data)
    # budget=: steps and LR schedule planned to end in time; recipe=auto: choices from the
    # data's statistics and the budget, written into the saved config (segexp/run/recipe.py)
    budget = budget_callback(cfg)
    apply_recipe(cfg, budget.budget_s if budget is not None else None)
    check_config(cfg)  # bad values fail here, before any data is read
    run_dir = Path(cfg.paths.output_dir)
    if is_global_zero():  # DDP children and SLURM tasks > 0 share rank 0's run folder
        write_metadata(run_dir)
        saved = recorded_config(run_dir / ".hydra" / "config.yaml", cfg.data.num_classes)
        if saved is not None:  # the filled value, so reproduce/resume read the same number
            write_text(run_dir / ".hydra" / "config.yaml", saved)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    use_weights_dir(cfg.paths.get("weights_dir"))  # model.encoder_weights=...: looked up here first
    model = build_module(cfg, datamodule)  # loss.weight=auto: weights from the train split
    transfer = init_from_config(cfg, model)  # init_from=: weights only, on every rank, before fit
    if transfer is not None and is_global_zero():
        transfer.emit()  # printed and in the run's log file
        update_run_info(run_dir, {"init_from": file_record(cfg.init_from, transfer)})

    loggers = [instantiate(entry) for entry in (cfg.logger or {}).values() if entry]
    callbacks = [
        instantiate(entry)
        for name, entry in (cfg.callbacks or {}).items()
        if entry and (loggers or name != "lr_monitor")  # LR monitor needs a logger
    ]
    if budget is not None:
        callbacks.append(budget)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(model.run_config)

    if cfg.ckpt_path:
        check_compatible(cfg.ckpt_path, model)  # a clear error instead of a state-dict traceback
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    if not any(k.startswith("val/") for k in trainer.callback_metrics):
        # Fit ran no validation in this process: it resumed from a checkpoint saved at the end of
        # the last epoch (a SLURM requeue or a kill there). Validate the final weights, which
        # is what the last epoch's validation measured, so metrics.json still has val/ figures.
        trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("test/")
    }

    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # verbose=False: the metrics are printed once, by print_summary below
        trainer.test(
            model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
        )
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )

    if datamodule.skipped and trainer.is_global_zero:  # data.on_bad_sample=skip
        update_run_info(run_dir, {"skipped_samples": datamodule.skipped})
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", metrics)
        print_summary(metrics, run_dir, datamodule.class_names, stage="test" if cfg.test else "val")
    if budget is not None and trainer.is_global_zero:
        budget.record(run_dir)  # planned vs actual time and steps, in run_info.json
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from segexp.run.distributed import (
        distributed_job,  # DDP in multiruns, SLURM requeue, lr_scaling
    )
    from segexp.run.errors import exit_codes
    from segexp.run.reproduce import prepare_config
    from segexp.track.sweeps import run_job

    with exit_codes():  # signals and user errors: a message and a non-zero exit code
        cfg = prepare_config(cfg)
        with distributed_job(cfg):
            # The optimized metric, or None for a failed/NaN job (a sweep records it and goes on).
            return run_job(train, cfg)


if __name__ == "__main__":
    from segexp.run.entry import hydra_entry
    from segexp.run.hydra_help import speed_up_help
    from segexp.run.reproduce import ReproduceError, rewrite_argv

    speed_up_help()

    try:  # reproduce=/resume= become Hydra arguments before Hydra parses them
        sys.argv = rewrite_argv(sys.argv)
    except ReproduceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    hydra_entry(main)  # Hydra's own config errors exit 2 too
