"""segexp's Optuna sweeper for Hydra: ``python train.py -m hparams_search=optuna``.

A Hydra plugin (Hydra finds it in the ``hydra_plugins`` namespace package); the search
space is Hydra's (``choice``, ``range``, ``interval``, ``tag(log, ...)``), the launcher any
of Hydra's (basic, ``hydra/launcher=slurm``). The study lives in durable storage, so
several sweep processes can share it and a killed one continues it; see
``segexp.track.study`` and docs/sweeps.md.
"""
