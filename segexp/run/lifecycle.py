"""The run lifecycle: one function from a composed config to a finished run folder.

    prepare the config once (num_classes, budget, recipe, trust, validation; saved once)
    -> instantiate(cfg.data)  -> SegDataModule
    -> build_module(cfg)      -> SegModule (network, loss, optimizer, metrics)
    -> loggers, callbacks, Trainer -> fit -> test the best checkpoint
    -> metrics.json, run_info.json, the printed summary

``segexp train`` (and ``python train.py``), the tests and the benchmarks all run this.
Heavy imports happen inside the functions so that ``--help`` and ``--cfg`` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict


def record_config(run_dir: Path, cfg: DictConfig, choices: list[Any] | None) -> None:
    """Write what preparing the config decided into the run's saved ``.hydra/config.yaml``,
    in one write: the filled ``data.num_classes``, the recipe's choices and the trusted
    packages. ``reproduce=`` and ``resume=`` then compose the values that ran."""
    from segexp.run.recipe import apply_choices
    from segexp.run.rundir import write_text

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():  # resume (hydra.output_subdir=null) keeps the config it saved
        return
    saved = OmegaConf.load(path)
    if not isinstance(saved, DictConfig):
        return
    before = OmegaConf.to_yaml(saved)
    with open_dict(saved):
        if "data" in saved:
            saved.data.num_classes = int(cfg.data.num_classes)
        if "trust" in cfg:
            saved.trust = list(cfg.trust)
    if choices:
        apply_choices(saved, choices)
    after = OmegaConf.to_yaml(saved)
    if after != before:
        write_text(path, after)


def prepare(cfg: DictConfig) -> Any:
    """Decide everything the run needs before any data is read or model built, save it in
    the run's config (rank 0) and return the budget callback (None without ``budget=``).

    - ``data.num_classes: null`` -> the dataset's own count, before the model reads
      ``${data.num_classes}``;
    - ``budget=``: steps and LR schedule planned to end in time (``segexp.run.budget``);
    - ``recipe=auto``: choices from the data's statistics and the budget (``segexp.run.recipe``);
    - ``trust``: the command line's packages and the user project's, recorded;
    - bad values fail here, before any data is read (``segexp.run.validate``).
    """
    from segexp.data.classes import resolve_num_classes
    from segexp.run.budget_value import parse_budget
    from segexp.run.checkpoint import trusted_packages
    from segexp.run.ranks import is_global_zero
    from segexp.run.recipe import apply_recipe
    from segexp.run.rundir import write_metadata
    from segexp.run.validate import check_config

    resolve_num_classes(cfg.data)
    budget = None
    if parse_budget(cfg.get("budget")) is not None:  # the callback's module imports Lightning
        from segexp.run.budget import budget_callback

        budget = budget_callback(cfg)
    choices = apply_recipe(cfg, budget.budget_s if budget is not None else None)
    with open_dict(cfg):
        cfg.trust = trusted_packages(cfg)
    check_config(cfg)
    if is_global_zero():  # DDP children and SLURM tasks > 0 share rank 0's run folder
        run_dir = Path(cfg.paths.output_dir)
        write_metadata(run_dir)
        record_config(run_dir, cfg, choices)
    return budget


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; write metrics.json; return the final metrics."""
    import sys

    # Decided (and bad values refused) before the imports below, which take seconds.
    budget = prepare(cfg)
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from segexp.model.encoder_weights import use_weights_dir
    from segexp.model.module import build_module
    from segexp.model.transfer import file_record, init_from_config
    from segexp.run.checkpoint import check_compatible
    from segexp.run.ranks import is_global_zero
    from segexp.run.report import print_summary
    from segexp.run.rundir import update_run_info, write_json

    run_dir = Path(cfg.paths.output_dir)
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
    # A resume that trained no more steps logged no train/ figures: the checkpoint's stand in.
    metrics = {k: v for k, v in getattr(model, "resumed_metrics", {}).items() if cfg.ckpt_path}
    metrics.update(
        {k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("test/")}
    )

    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and not Path(best).is_file():  # deleted before a resume= (said at fit start)
            if trainer.is_global_zero:
                print(
                    f"segexp: the best checkpoint {best} is gone: testing the final weights "
                    "(last.ckpt) instead",
                    file=sys.stderr,
                    flush=True,
                )
            best = ""
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
