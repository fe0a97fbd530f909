"""Disentanglement metrics (installed as ``sbvae.metrics``), disentanglement_lib's protocol, batched in torch.

Every ``data``-level metric takes a GroundTruthData-like ``data`` (factor_sizes,
sample_factors, render), a ``represent`` callable mapping images [n, C, H, W]
to codes [n, D] (the encoder mean), a ``seed`` (int or CPU torch.Generator), a
``device`` (default: represent's parameters' device, else CPU) and a
``chunk_size`` (images rendered and encoded per call). Codes-level functions
(``mig``, ``dci_from_codes``, ...) take codes [N, D] and factor indices [N, K].
Every result is a frozen dataclass with a headline ``score``, ``scalars()``
(its single numbers by name) and ``as_dict()`` for JSON. Errors a user can fix raise ``MetricError`` (a
ValueError and an ``sbvae.errors.SBVAEError``) with the fix in one sentence.
"""

from sbvae.metrics.beta_vae import BetaVAEResult, beta_vae_score
from sbvae.metrics.dci import DCIResult, completeness, dci, dci_from_codes, disentanglement
from sbvae.metrics.downstream import DownstreamResult, downstream, downstream_from_codes
from sbvae.metrics.elbo import ELBOResult, evaluate_elbo
from sbvae.metrics.factor_vae import FactorVAEResult, factor_vae_score
from sbvae.metrics.irs import IRSResult, irs, irs_from_codes
from sbvae.metrics.latents_used import LatentsUsedResult, latents_used
from sbvae.metrics.mig import MIGResult, compute_mig, discretize, entropy, mig, mutual_information
from sbvae.metrics.modularity import (
    ModularityResult,
    explicitness,
    modularity,
    modularity_explicitness,
    modularity_explicitness_from_codes,
)
from sbvae.metrics.sap import SAPResult, sap, sap_from_codes
from sbvae.metrics.udr import UDRModelResult, UDRResult, udr, udr_from_codes
from sbvae.metrics.unsupervised import (
    UnsupervisedResult,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    unsupervised,
    unsupervised_from_codes,
)
from sbvae.metrics.utils import MetricError, MetricResult, check_ground_truth, encode_factors, sample_codes

__all__ = [
    "BetaVAEResult",
    "DCIResult",
    "DownstreamResult",
    "ELBOResult",
    "FactorVAEResult",
    "IRSResult",
    "LatentsUsedResult",
    "MIGResult",
    "MetricError",
    "MetricResult",
    "ModularityResult",
    "SAPResult",
    "UDRModelResult",
    "UDRResult",
    "UnsupervisedResult",
    "beta_vae_score",
    "check_ground_truth",
    "completeness",
    "compute_mig",
    "dci",
    "dci_from_codes",
    "disentanglement",
    "downstream",
    "downstream_from_codes",
    "discretize",
    "encode_factors",
    "entropy",
    "evaluate_elbo",
    "explicitness",
    "factor_vae_score",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "irs",
    "irs_from_codes",
    "latents_used",
    "mig",
    "modularity",
    "modularity_explicitness",
    "modularity_explicitness_from_codes",
    "mutual_information",
    "sample_codes",
    "sap",
    "sap_from_codes",
    "udr",
    "udr_from_codes",
    "unsupervised",
    "unsupervised_from_codes",
]
