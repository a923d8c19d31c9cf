"""Image quality metrics of the generation task, on images in [0, `data_range`]:

- PSNR = 10 log10(data_range^2 / MSE), per image over all its channels and pixels, then the
  mean over images (MSE floored at 1e-10: identical images score 100 dB);
- SSIM (Wang, Bovik, Sheikh, Simoncelli. Image Quality Assessment: From Error Visibility to
  Structural Similarity. IEEE TIP 2004): local means, variances and covariance under an 11x11
  Gaussian window of sigma 1.5 (each channel alone; 'valid' positions only, where the window
  lies inside the image), C1 = (0.01 L)^2, C2 = (0.03 L)^2,
  SSIM = mean over positions and channels of
  (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
  then the mean over images. This equals `skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)` (which
  averages over the same interior positions). An image smaller than 11 pixels on a side gets
  the largest odd window that fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = 11
SIGMA = 1.5


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB of two batches [N, C, H, W]: a tensor [N]."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp(min=1e-10))


def gaussian_window(side: int = WINDOW, sigma: float = SIGMA) -> Tensor:
    """The normalised 2-D Gaussian [side, side] (float64)."""
    r = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM of two batches [N, C, H, W]: a tensor [N] (see the module docstring)."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"ssim compares two [N, C, H, W] batches, got {list(a.shape)}, {list(b.shape)}"
        )
    n, c, h, w = a.shape
    side = min(WINDOW, h, w)
    side -= 1 - side % 2  # odd
    kernel = gaussian_window(side).to(a.device).expand(c, 1, side, side)
    x, y = a.double(), b.double()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1)
