"""Auditing the network that the inputs are validated for (issue 15).

* :func:`load_model` -> :class:`AuditedModel`: TorchScript, ``torch.export`` (``.pt2``) and
  ONNX networks, never a pickle; the model is a derived-column producer for
  :class:`validator.inputs.transform.TransformChain`.
* :func:`taylor_sums` -> :class:`TaylorSums`: Taylor-coefficient importances (Wunsch et al.,
  arXiv:1803.08782) as mergeable sums; :func:`taylor_coefficients` per event.
* :func:`shap_importance` -> :class:`ShapResult`: mean |SHAP| per input (Lundberg & Lee,
  NeurIPS 2017, arXiv:1705.07874).

torch, onnx, onnxruntime, onnx2torch and shap are imported only when used (the ``model``
extra).
"""

from validator.model.formats import EXPORT_HINT, METADATA_KEY
from validator.model.load import DERIVATIVE_METHODS, KINDS, AuditedModel, load_model
from validator.model.shap_values import ShapResult, shap_importance
from validator.model.taylor import (
    ALL,
    AbsMeanSums,
    TaylorCoefficients,
    TaylorMeans,
    TaylorSums,
    taylor_coefficients,
    taylor_sums,
)

__all__ = [
    "ALL",
    "DERIVATIVE_METHODS",
    "EXPORT_HINT",
    "KINDS",
    "METADATA_KEY",
    "AbsMeanSums",
    "AuditedModel",
    "ShapResult",
    "TaylorCoefficients",
    "TaylorMeans",
    "TaylorSums",
    "load_model",
    "shap_importance",
    "taylor_coefficients",
    "taylor_sums",
]
