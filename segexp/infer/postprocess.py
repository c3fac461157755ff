"""Dense CRF post-processing (DeepLab v1/v2): refine softmax probabilities with the image.

An optional extra: ``pip install -e .[crf]`` installs pydensecrf2. The
``postprocess/crf.yaml`` config instantiates :class:`DenseCRF`; evaluation and
inference call it once per image.
"""

from __future__ import annotations

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

    Call: ``crf(image uint8 (H, W, 3), probs float32 (C, H, W)) -> probs float32 (C, H, W)``.
    """

    def __init__(
        self,
        iterations: int = 5,
        bilateral_weight: float = 10.0,
        bilateral_sxy: float = 80.0,
        bilateral_srgb: float = 13.0,
        gaussian_weight: float = 3.0,
        gaussian_sxy: float = 3.0,
        min_prob: float = 1e-8,
    ) -> None:
        _import_densecrf()  # fail at instantiation, not on the first image
        if iterations < 1:
            raise UserError(f"postprocess.iterations={iterations}: must be at least 1.")
        self.iterations = int(iterations)
        self.bilateral_weight = float(bilateral_weight)
        self.bilateral_sxy = float(bilateral_sxy)
        self.bilateral_srgb = float(bilateral_srgb)
        self.gaussian_weight = float(gaussian_weight)
        self.gaussian_sxy = float(gaussian_sxy)
        self.min_prob = float(min_prob)

    def __call__(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        densecrf = _import_densecrf()
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
        crf = densecrf.DenseCRF2D(width, height, num_classes)
        unary = -np.log(np.clip(probs, self.min_prob, 1.0)).reshape(num_classes, -1)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        crf.addPairwiseGaussian(sxy=self.gaussian_sxy, compat=self.gaussian_weight)
        crf.addPairwiseBilateral(
            sxy=self.bilateral_sxy,
            srgb=self.bilateral_srgb,
            # pydensecrf takes a writable C-contiguous buffer; decoded images are often read-only.
            rgbim=np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]),
            compat=self.bilateral_weight,
        )
        refined = crf.inference(self.iterations)  # (C, H*W) marginals
        return np.asarray(refined, dtype=np.float32).reshape(num_classes, height, width)

    def __repr__(self) -> str:
        return (
            f"DenseCRF(iterations={self.iterations}, bilateral_weight={self.bilateral_weight}, "
            f"bilateral_sxy={self.bilateral_sxy}, bilateral_srgb={self.bilateral_srgb}, "
            f"gaussian_weight={self.gaussian_weight}, gaussian_sxy={self.gaussian_sxy})"
        )
