"""Published reference figures with their citations, and the rules the report states beside them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Reference:
    pattern: str  # regular expression for the model names it applies to (plus any "-variant" suffix)
    track: str
    figure: str
    source: str
    nats: float | None = None  # the headline NLL on 28x28 MNIST, shown in bits/dim too

    @property
    def text(self) -> str:
        if self.nats is None:
            return self.figure
        bpd = self.nats / (MNIST_DIM * math.log(2))
        return self.figure.replace(" nats", f" nats (= {bpd:.3f} bits/dim)", 1)  # after the headline number

    def matches(self, model: str, track: str) -> bool:
        return track == self.track and re.fullmatch(rf"(?:{self.pattern})(?:-.*)?", model) is not None


MNIST_DIM = 784


REFERENCES = [
    # Binarized MNIST (Larochelle & Murray's fixed binarization, 50,000 training images) test NLL.
    Reference("fvsbn", "binary", "97.45 nats",
              "Larochelle & Murray 2011 (NADE, AISTATS), Table 2, FVSBN row; also quoted in Germain et al. 2015 "
              "(MADE), binarized-MNIST table", 97.45),
    Reference("nade", "binary", "88.86 nats", "Larochelle & Murray 2011 (NADE, AISTATS), Table 2, NADE row", 88.86),
    Reference("made", "binary", "88.04 nats", "Germain et al. 2015 (MADE), binarized-MNIST table", 88.04),
    Reference("pixelcnn", "binary", "81.30 nats", "van den Oord et al. 2016 (Pixel RNN, ICML), Table 4, PixelCNN "
              "row", 81.30),
    Reference("vae", "binary", "89.9 nats NLL (200 importance samples)",
              "Rezende & Mohamed 2015 (normalizing flows), binarized-MNIST table, DLGM with diagonal covariance",
              89.9),
    # 8-bit MNIST (60,000 training images) test bits/dim, as compiled in the FFJORD paper's density-estimation
    # table (Grathwohl et al. 2019, ICLR, Table 2, MNIST column).
    Reference("made", "8bit", "2.04 bits/dim", "Germain et al. 2015 (MADE), as compiled in Grathwohl et al. 2019 "
              "(FFJORD, ICLR), Table 2, MNIST column; trained by Papamakarios et al. 2017 (MAF) with Gaussian "
              "conditionals on dequantized, logit-transformed pixels: a bound, where made-8bit's is exact"),
    Reference("maf", "8bit", "1.89 bits/dim", "Papamakarios et al. 2017 (MAF), as compiled in Grathwohl et al. 2019 "
              "(FFJORD, ICLR), Table 2, MNIST column"),
    Reference("realnvp", "8bit", "1.06 bits/dim", "Dinh et al. 2017, as compiled in Grathwohl et al. 2019 (FFJORD, "
              "ICLR), Table 2, MNIST column"),
    Reference("glow", "8bit", "1.05 bits/dim", "Kingma & Dhariwal 2018, as compiled in Grathwohl et al. 2019 (FFJORD, "
              "ICLR), Table 2, MNIST column; Glow's code pads MNIST to 32x32 and divides the NLL by the padded "
              "size, 1,024 dimensions instead of 784 (openai/glow issue 81), so the figure is not per MNIST pixel"),
    Reference("ffjord", "8bit", "0.99 bits/dim", "Grathwohl et al. 2019 (FFJORD, ICLR), Table 2, MNIST column"),
]


REFERENCE_CAVEAT = ("published: full MNIST (binary track: Larochelle & Murray's binarized MNIST, 50,000 training "
                    "images; 8bit: 60,000), trained far longer than this run's budget, in another code base: context "
                    "for scale, not a ranking")


BINARY_SAMPLING_RULE = ("Binary track: every model's samples are binary draws from its own distribution ({0,1} pixels, "
                        "never Bernoulli means; the VAEs draw z, then each pixel), for the metrics and the grids alike.")


LIKELIHOOD_KIND_RULE = ("exact only for a discrete likelihood computed exactly (the autoregressive models, binary and "
                        "8-bit); a continuous density on the 8bit track (RealNVP and the other flows) is scored on "
                        "dequantized pixels, which by Jensen gives an upper bound on the discrete NLL: bound; the "
                        "VAEs' ELBO and DDPM's variational bound are bounds too.")


def reference_for(model: str, track: str) -> str:
    found = [r.text for r in REFERENCES if r.matches(model, track)]
    return f"published: {found[0]}" if found else ""


TRACK_NOTES = {
    "binary": "pixels in {0, 1}: dynamic binarization for training, one fixed binarization of the test split "
              "(seeded, or the dataset's own); bits/dim = NLL / (D ln 2).",
    "8bit": "integer pixels 0..255; discrete models (the 8-bit autoregressive models and VAE: a discretized "
            "logistic mixture per pixel) score the integers themselves, bits/dim = NLL / (D ln 2); continuous "
            "models train on uniformly dequantized y = (x + u) / 256 and bits/dim = (NLL_y + D ln 256) / (D ln 2), "
            "an upper bound on the discrete NLL. Both are bits per dimension of the same discrete data, so they "
            "rank in one table.",
}


def reference_table() -> pd.DataFrame:
    return pd.DataFrame([{"model": r.pattern, "track": r.track, "figure": r.text, "source": r.source}
                         for r in REFERENCES])
