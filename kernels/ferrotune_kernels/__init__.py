"""ferrotune-kernels: fused losses and log-probs for LLM training (Triton on GPUs, else PyTorch).

Every op computes per-token ``log p(label)`` with an fp32 online log-sum-exp and never holds fp32
(N, V) logits:

- ``cross_entropy(logits, labels)``: transformers' ``ForCausalLMLoss``, fused.
- ``linear_cross_entropy(hidden, weight, labels)``: the same from hidden states and the lm_head
  weight, the full logits never made.
- ``token_logprobs(logits, labels)`` / ``linear_token_logprobs(hidden, weight, labels)``: per-token
  log-probs (and entropy), differentiable for any per-token upstream gradient (DPO, PPO).

CUDA tensors run Triton kernels, CPU tensors a chunked PyTorch path;
``FERROTUNE_KERNELS=triton|torch`` forces one. Each op has a plain-PyTorch reference ``<op>_ref``
beside it.
"""

from ferrotune_kernels.cross_entropy import cross_entropy, cross_entropy_ref
from ferrotune_kernels.linear import (
    linear_cross_entropy,
    linear_cross_entropy_ref,
    linear_token_logprobs,
    linear_token_logprobs_ref,
)
from ferrotune_kernels.token_logprobs import token_logprobs, token_logprobs_ref

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "cross_entropy",
    "cross_entropy_ref",
    "linear_cross_entropy",
    "linear_cross_entropy_ref",
    "linear_token_logprobs",
    "linear_token_logprobs_ref",
    "token_logprobs",
    "token_logprobs_ref",
]
