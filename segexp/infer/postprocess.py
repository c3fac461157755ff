"""Dense CRF post-processing (DeepLab v1/v2): refine softmax probabilities with the image.

An optional extra: ``pip install -e .[crf]`` installs pydensecrf2. The
``postprocess/crf.yaml`` config instantiates :class:`DenseCRF`; evaluation and
inference call it once per image. ``python -m segexp.tune_crf`` chooses its settings on
a split and writes them to a file that ``postprocess.params`` reads.

Untuned kernels can cost more than they give (on held-out grey-level MRI, the defaults cut a
trained model's mIoU from 0.797 to 0.690; settings tuned on the training split gave
0.798), so ``segexp eval`` and ``segexp predict`` (``build_postprocess``) refuse a CRF
without a params file and name the one ``segexp tune-crf`` command that writes it;
``postprocess.untuned=true`` runs the config's kernels as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segexp.errors import UserError

INSTALL_HINT = (
    "postprocess=crf needs the dense CRF extra: pip install -e .[crf] "
    "(pydensecrf2; it builds from source in about a minute and needs gcc and the Python headers). "
    "Or run without it: postprocess=none."
)


def _import_densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return densecrf


class DenseCRF:
    """Fully connected CRF (Krähenbühl & Koltun 2011) with mean-field inference.

    Energy: unary ``-log p`` from the network, plus two Potts pairwise terms
    between every pair of pixels: an appearance kernel (close *and* similar
    colour -> same label, weight ``bilateral_weight``, widths ``bilateral_sxy``
    pixels and ``bilateral_srgb`` intensity levels) and a smoothness kernel
    (close -> same label, ``gaussian_weight``, ``gaussian_sxy``). DeepLab's
    names: w1, theta_alpha, theta_beta = bilateral_weight, bilateral_sxy,
    bilateral_srgb; w2, theta_gamma = gaussian_weight, gaussian_sxy.

    With ``relative_widths=True`` the two spatial widths (``bilateral_sxy``,
    ``gaussian_sxy``) are fractions of each image's shorter side (0.1 on a 480 x 640
    image: 48 pixels), so one setting suits every image size; with ``False`` they are
    pixels. ``bilateral_srgb`` is always in 0..255 colour levels.

    ``params``: a YAML file (``python -m segexp.tune_crf`` writes one) whose keys
    override these arguments; ``enabled: false`` there (or here) turns the CRF off, so
    the call returns the probabilities unchanged. ``untuned``: whether running without
    ``params`` is allowed; only ``build_postprocess`` reads it (the config says false).

    Call: ``crf(image uint8 (H, W, 3), probs float32 (C, H, W)) -> probs float32 (C, H, W)``.
    """

    SETTINGS = (
        "enabled",
        "iterations",
        "bilateral_weight",
        "bilateral_sxy",
        "bilateral_srgb",
        "gaussian_weight",
        "gaussian_sxy",
        "relative_widths",
    )

    def __init__(
        self,
        iterations: int = 5,
        bilateral_weight: float = 10.0,
        bilateral_sxy: float = 80.0,
        bilateral_srgb: float = 13.0,
        gaussian_weight: float = 3.0,
        gaussian_sxy: float = 3.0,
        min_prob: float = 1e-8,
        relative_widths: bool = False,
        enabled: bool = True,
        params: str | os.PathLike | None = None,
        untuned: bool = True,
    ) -> None:
        self.params = None if params in (None, "") else str(params)
        self.untuned = bool(untuned)
        if self.params is not None:
            overrides = read_params(self.params)
            given = {
                "enabled": enabled,
                "iterations": iterations,
                "bilateral_weight": bilateral_weight,
                "bilateral_sxy": bilateral_sxy,
                "bilateral_srgb": bilateral_srgb,
                "gaussian_weight": gaussian_weight,
                "gaussian_sxy": gaussian_sxy,
                "relative_widths": relative_widths,
            }
            given.update(overrides)
            enabled, iterations = given["enabled"], given["iterations"]
            bilateral_weight, bilateral_sxy = given["bilateral_weight"], given["bilateral_sxy"]
            bilateral_srgb, gaussian_weight = given["bilateral_srgb"], given["gaussian_weight"]
            gaussian_sxy, relative_widths = given["gaussian_sxy"], given["relative_widths"]
        self.enabled = bool(enabled)
        if self.enabled:
            _import_densecrf()  # fail at instantiation, not on the first image
        if iterations < 1:
            raise UserError(f"postprocess.iterations={iterations}: must be at least 1.")
        for key, width in (("bilateral_sxy", bilateral_sxy), ("gaussian_sxy", gaussian_sxy)):
            if width <= 0:
                raise UserError(f"postprocess.{key}={width}: must be > 0.")
        self.iterations = int(iterations)
        self.bilateral_weight = float(bilateral_weight)
        self.bilateral_sxy = float(bilateral_sxy)
        self.bilateral_srgb = float(bilateral_srgb)
        self.gaussian_weight = float(gaussian_weight)
        self.gaussian_sxy = float(gaussian_sxy)
        self.min_prob = float(min_prob)
        self.relative_widths = bool(relative_widths)

    def widths(self, height: int, width: int) -> tuple[float, float]:
        """(bilateral_sxy, gaussian_sxy) in pixels for an image of this size."""
        if not self.relative_widths:
            return self.bilateral_sxy, self.gaussian_sxy
        side = min(height, width)
        return self.bilateral_sxy * side, self.gaussian_sxy * side

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        if probs.ndim != 3:
            raise ValueError(f"DenseCRF: probs must be (C, H, W), got shape {probs.shape}.")
        num_classes, height, width = probs.shape
        if image.shape != (height, width, 3):
            raise ValueError(
                f"DenseCRF: image must be (H, W, 3) = ({height}, {width}, 3) to match probs "
                f"{probs.shape}, got {image.shape}; pass the un-normalised RGB image."
            )
        if image.dtype != np.uint8:
            raise ValueError(
                f"DenseCRF: image must be uint8 RGB (0..255), got {image.dtype}; "
                "the colour widths (bilateral_srgb) are in 0..255 units."
            )
        if not self.enabled:
            return np.asarray(probs, dtype=np.float32)
        densecrf = _import_densecrf()
        bilateral_sxy, gaussian_sxy = self.widths(height, width)
        crf = densecrf.DenseCRF2D(width, height, num_classes)
        unary = -np.log(np.clip(probs, self.min_prob, 1.0)).reshape(num_classes, -1)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=self.gaussian_weight)
        crf.addPairwiseBilateral(
            sxy=bilateral_sxy,
            srgb=self.bilateral_srgb,
            # pydensecrf takes a writable C-contiguous buffer; decoded images are often read-only.
            rgbim=np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]),
            compat=self.bilateral_weight,
        )
        refined = crf.inference(self.iterations)  # (C, H*W) marginals
        return np.asarray(refined, dtype=np.float32).reshape(num_classes, height, width)

    def settings(self) -> dict[str, Any]:
        """The settings as a ``params`` file holds them."""
        if not self.enabled:
            return {"enabled": False}
        return {key: getattr(self, key) for key in self.SETTINGS}

    def __repr__(self) -> str:
        if not self.enabled:
            return "DenseCRF(enabled=False)"
        return (
            f"DenseCRF(relative_widths={self.relative_widths}, iterations={self.iterations}, "
            f"bilateral_weight={self.bilateral_weight}, "
            f"bilateral_sxy={self.bilateral_sxy}, bilateral_srgb={self.bilateral_srgb}, "
            f"gaussian_weight={self.gaussian_weight}, gaussian_sxy={self.gaussian_sxy})"
        )


def read_params(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a ``postprocess.params`` YAML file (keys: :attr:`DenseCRF.SETTINGS`)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError(
            f"postprocess.params={path}: no such file; pass the crf_params.yaml that "
            "python -m segexp.tune_crf wrote, or drop postprocess.params."
        )
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise UserError(
            f"postprocess.params={path}: not valid YAML ({error}); write it again with "
            "python -m segexp.tune_crf."
        ) from error
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise UserError(
            f"postprocess.params={path}: expected a mapping of CRF settings, got "
            f"{type(loaded).__name__}; write it again with python -m segexp.tune_crf."
        )
    unknown = sorted(set(loaded) - set(DenseCRF.SETTINGS))
    if unknown:
        raise UserError(
            f"postprocess.params={path}: unknown keys {unknown}; the file may hold "
            f"{', '.join(DenseCRF.SETTINGS)}."
        )
    return loaded


def write_params(path: str | os.PathLike, settings: dict[str, Any], header: str = "") -> Path:
    """Write CRF settings as a ``postprocess.params`` file (``header``: comment lines)."""
    import yaml

    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    file.write_text(comments + yaml.safe_dump(dict(settings), sort_keys=False))
    return file


CRF_TARGET = f"{DenseCRF.__module__}.{DenseCRF.__qualname__}"
PASSED_ON = ("data", "inference", "trust")  # overrides the tuning run needs as well


class UntunedCRFError(UserError):
    """``postprocess=crf`` without tuned settings (``postprocess.params``)."""


def build_postprocess(cfg: Any, tune_split: str = "val") -> Any:
    """``cfg.postprocess`` instantiated, None when there is none.

    A dense CRF with neither ``params`` nor ``untuned: true`` raises ``UntunedCRFError``
    naming the ``segexp tune-crf`` command (its split: ``tune_split``) for this checkpoint.
    """
    from hydra.utils import instantiate

    node = cfg.get("postprocess")
    if not node:
        return None
    untuned = node.get("enabled", True) and not node.get("params") and not node.get("untuned")
    if node.get("_target_") == CRF_TARGET and untuned:
        raise UntunedCRFError(untuned_message(cfg, tune_split))
    return instantiate(node)


def untuned_message(cfg: Any, tune_split: str) -> str:
    """What to run: ``segexp tune-crf`` on this checkpoint (and the data and inference
    overrides of this command), writing into the checkpoint's run folder."""
    import shlex

    ckpt = Path(str(cfg.ckpt_path)).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    out = run_dir / f"crf-{ckpt.stem}"
    from hydra.core.hydra_config import HydraConfig

    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    passed = [o for o in given if o.lstrip("+~").split("=")[0].split(".")[0] in PASSED_ON]
    command = " ".join(
        shlex.quote(part)
        for part in [
            "segexp", "tune-crf", f"ckpt_path={ckpt}", f"split={tune_split}", *passed,
            f"hydra.run.dir={out}",
        ]
    )  # fmt: skip
    return (
        "postprocess=crf has no tuned settings (postprocess.params): the default kernels can "
        "lower mIoU (0.797 -> 0.690 on held-out MRI; tuned: 0.798). Tune them once with "
        f"`{command}`, then add postprocess.params={shlex.quote(str(out / 'crf_params.yaml'))} "
        "(or postprocess.untuned=true to run the default kernels anyway)."
    )
