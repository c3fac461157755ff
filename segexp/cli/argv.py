"""Every rewrite of a command line before Hydra parses it, in one place.

- ``reproduce=<run>`` / ``resume=<run>`` become the Hydra arguments that compose that run's
  saved config (``segexp train``);
- the older flags of ``segexp browse`` (``--num N --split S --seed K --out FILE``) and of
  ``segexp check`` (``--json FILE``) become the keys ``num=``, ``split=``, ``seed=``,
  ``out=`` and ``json=``.

Nothing here imports torch: these run before every ``--help``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from segexp.cli.errors import fail
from segexp.configs import CONF_DIR
from segexp.run.reproduce import ReproduceError, saved_config

# Overrides that change how a resumed run executes, never what it computes.
RESUME_SAFE_KEYS = ("data.num_workers", "data.pin_memory", "trainer.enable_progress_bar")
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def _split_override(arg: str) -> tuple[str, str]:
    key, _, value = arg.partition("=")
    return key.lstrip("+~"), value


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and "=" in arg


def _quote(value: str) -> str:
    # Hydra's override grammar: quoted, a path may hold characters like ',' or '='.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rewrite_argv(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Turn ``reproduce=<run>`` / ``resume=<run>`` into the Hydra arguments that do it.

    Any other command line is returned unchanged. Raises ReproduceError for an
    unusable request: a folder without a saved config, both keys at once, a
    config-group override (the saved config holds values, not group choices), or
    any override on resume except ``hydra.*`` and ``RESUME_SAFE_KEYS``.
    """
    argv = list(argv)
    requests = [(i, *_split_override(a)) for i, a in enumerate(argv[1:], 1) if _is_override(a)]
    modes = [(i, key, value) for i, key, value in requests if key in ("reproduce", "resume")]
    if not modes:
        return argv
    if len(modes) > 1:
        raise ReproduceError(
            "pass either reproduce=<run folder> (a new run with its config) or resume=<run folder> "
            "(continue it), not both or twice"
        )
    index, mode, value = modes[0]
    if value in ("", "null", "None"):
        return [a for i, a in enumerate(argv) if i != index]
    run_dir = Path(value.strip("'\"")).expanduser().resolve()
    hydra_dir = saved_config(run_dir).parent

    flags = [a for a in argv[1:] if a.startswith("-")]
    if mode == "resume" and ("-m" in flags or "--multirun" in flags):
        raise ReproduceError(
            f"resume={run_dir} continues one run in its own folder; it cannot be part of a "
            "multirun (-m). Resume each run folder with its own command."
        )
    config_path = next(
        (argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-path", "-cp")), None
    ) or next((a.split("=", 1)[1] for a in flags if a.startswith("--config-path=")), None)
    if config_path is not None:
        if Path(config_path).resolve() == hydra_dir:
            return argv  # already rewritten: a DDP child re-launched with our command line
        raise ReproduceError(
            f"{mode}={run_dir} composes that run's saved config; drop --config-path={config_path}"
        )

    others = [(key, argv[i]) for i, key, _ in requests if i != index]
    groups = sorted({key for key, _ in others if (conf_dir / key).is_dir()})
    if groups:
        raise ReproduceError(
            f"{mode}={run_dir} runs that folder's saved config, which holds values, not config-group "
            f"choices; cannot apply {', '.join(f'{g}=...' for g in groups)}. Override values instead "
            f"(e.g. {groups[0]}.<key>=<value>), or start a new experiment without {mode}=."
        )
    if mode == "resume":
        refused = [
            arg
            for key, arg in others
            if not key.startswith(("hydra.", "hydra/")) and key not in RESUME_SAFE_KEYS
        ]
        if refused:
            raise ReproduceError(
                f"resume={run_dir} continues that run with its saved config; these overrides would "
                f"change it: {' '.join(refused)}. Resume without them, or start a new run: "
                f"python train.py reproduce={run_dir} {' '.join(refused)} (a new folder, fresh "
                f"weights), or ckpt_path={run_dir}/checkpoints/last.ckpt <overrides> to start from "
                f"its weights. Allowed on resume: {', '.join(RESUME_SAFE_KEYS)}, hydra.*"
            )
        unwritable = [p for p in (run_dir, run_dir / "checkpoints") if p.is_dir()]
        unwritable = [p for p in unwritable if not os.access(p, os.W_OK | os.X_OK)]
        if unwritable:
            raise ReproduceError(
                f"resume={run_dir}: {unwritable[0]} cannot be written (read-only or no "
                "permission), and resume= writes into the run folder (checkpoints, logs, "
                "metrics.json). Copy it to a "
                "writable place and resume the copy: cp -r <run folder> <copy>, then "
                "resume=<copy>."
            )

    skip_values = {i + 1 for i, a in enumerate(argv) if a in _VALUE_FLAGS}
    rest = [a for i, a in enumerate(argv[1:], 1) if i != index and i not in skip_values]
    new = [argv[0], "--config-path", str(hydra_dir), "--config-name", "config", *rest]
    # Config groups such as hydra/launcher still come from the project's conf/.
    new.append(f"hydra.searchpath=[{_quote('file://' + str(conf_dir))}]")
    new.append(f"++{mode}={_quote(str(run_dir))}")
    if mode == "resume":
        new += [f"hydra.run.dir={_quote(str(run_dir))}", "hydra.output_subdir=null"]
    else:
        # The saved config has no hydra section, so a reproduction would fall back to Hydra's
        # one-second folder names: give it the unique folders of conf/train.yaml.
        given = {_split_override(a)[0] for a in rest if _is_override(a)}
        new.append("+hydra.callbacks.unique_run_dirs._target_=segexp.run.rundir.UniqueRunDirs")
        for key, root in (("hydra.run.dir", "outputs"), ("hydra.sweep.dir", "multirun")):
            if key not in given:
                new.append(f"{key}='${{unique_dir:{root}/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}}}'")
    return new


LEGACY_FLAGS = ("--num", "--split", "--seed", "--out")
_PLAIN_VALUE = re.compile(r"[\w./\-+:@%~]+")


def _override_value(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else single-quoted."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def translate_legacy_flags(argv: Sequence[str]) -> list[str]:
    """``--num 16 --out=grid.png`` -> ``num=16 out=grid.png``; every other argument as is."""
    args, out, index = list(argv), [], 0
    while index < len(args):
        arg = args[index]
        flag, has_value, value = arg.partition("=")
        if flag in LEGACY_FLAGS:
            if not has_value:
                if index + 1 >= len(args):
                    fail(f"{flag} needs a value, e.g. {flag[2:]}=VALUE")
                index += 1
                value = args[index]
            out.append(f"{flag[2:]}={_override_value(value)}")
        else:
            out.append(arg)
        index += 1
    return out


def translate_check_flags(argv: list[str]) -> list[str]:
    """The legacy ``--json FILE`` / ``--json=FILE`` become the Hydra key ``json=FILE``."""
    out, args = [], iter(argv)
    for arg in args:
        if arg == "--json":
            value = next(args, None)
            if value is None:
                fail("--json needs a file name (or use json=FILE)")
            out.append(f"json={value}")
        elif arg.startswith("--json="):
            out.append(f"json={arg[len('--json=') :]}")
        else:
            out.append(arg)
    return out
