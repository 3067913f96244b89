"""NonAutoregressiveWrapper: masked-token training and iterative parallel decoding.

Papers: Mask-Predict (Ghazvininejad et al., arXiv 1904.09324) and MaskGIT (Chang et al.,
arXiv 2202.04200): train a bidirectional model to predict masked tokens, generate by starting
from an all-masked sequence and, over ``steps`` rounds, predicting every masked token and
re-masking the least confident ones; the number masked after round s follows a schedule
``gamma`` (linear ``1 - t`` or MaskGIT's cosine ``cos(pi t / 2)``). Token critic (Lezama et al.,
arXiv 2209.04439): a second model scores which tokens were generated and should be re-masked.
Loss weighting of simple masked diffusion (MDLM, Sahoo et al., arXiv 2406.07524, eq. 10).

Training, for each row: draw t ~ U(0, 1), mask ``ceil(max(1, gamma(t) * n))`` random positions;
of those, with probability 1/2 a ``no_replace_prob`` fraction keep their token, and with
probability 1/2 a ``random_token_prob`` fraction of the rest get a random token (BERT); the
others become ``mask_id``. The loss is the cross-entropy at the masked positions, weighted by
``|gamma'(t)| / gamma(t)`` per row with ``use_simple_mdlm_loss_weight`` (MDLM's NELBO weight,
written for a schedule that decreases in t). With self-conditioning the model also receives
(through ``sum_embeds``) a projection of its own embeddings of the same input, computed without
gradient, or of a learned null embedding.

Shape legend: b batch, n sequence (= max_seq_len), v vocabulary, d embedding dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from x_attn.routing import checked_keywords
from x_attn.serialization import records_config
from x_attn.utils import check_positive_int, check_probability
from x_attn.wrappers.decoding import inference
from x_attn.wrappers.nonautoregressive_parts import (
    SelfCritic,
    bert_corruption,
    mdlm_weight,
    resolve_schedule,
    unmask_step,
)
from x_attn.wrappers.sampling import gumbel_noise

__all__ = ["Losses", "NonAutoregressiveWrapper"]


class Losses(NamedTuple):
    """Total loss, generator loss (None when only the critic trains), critic loss (or None)."""

    loss: Tensor
    generator_loss: Tensor | None
    critic_loss: Tensor | None


@records_config
class NonAutoregressiveWrapper(nn.Module):
    """Masked-token training and MaskGIT decoding around a TransformerWrapper (Encoder).

    Args:
        net: token model over sequences of exactly ``net.max_seq_len`` tokens.
        mask_id: the mask token (an id of ``net``'s vocabulary; never sampled).
        steps: decoding rounds.
        self_cond, self_cond_train_prob: self-conditioning and how often it is on in training.
        no_replace_prob, random_token_prob: BERT-style corruption of the masked positions.
        schedule: "linear", "cosine" or a callable t -> fraction masked, decreasing on [0, 1].
        can_mask_prev_unmasked: decoding may re-mask tokens fixed in earlier rounds.
        token_critic: a model giving one logit per position (e.g. TransformerWrapper with
            ``logits_dim=1``); ``self_token_critic`` builds one on ``net``'s embeddings.
        critic_loss_weight: weight of the critic's loss in the total.
        use_simple_mdlm_loss_weight: weight the loss by ``|gamma'(t)| / gamma(t)``.
    """

    @checked_keywords
    def __init__(
        self,
        net: nn.Module,
        *,
        mask_id: int,
        steps: int = 18,
        self_cond: bool = False,
        self_cond_train_prob: float = 0.75,
        no_replace_prob: float = 0.15,
        random_token_prob: float = 0.1,
        schedule: str | Callable[[Tensor], Tensor] = "linear",
        can_mask_prev_unmasked: bool = False,
        token_critic: nn.Module | None = None,
        self_token_critic: bool = False,
        critic_loss_weight: float = 1.0,
        use_simple_mdlm_loss_weight: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        vocab = getattr(net, "num_tokens", None)
        if not isinstance(net, nn.Module) or vocab is None or not hasattr(net, "emb_dim"):
            raise TypeError(f"{owner}: 'net' must be a TransformerWrapper")
        check_positive_int("steps", steps, owner)
        if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
            raise ValueError(f"{owner}: 'mask_id' must be a token id in [0, {vocab})")
        check_probability("no_replace_prob", no_replace_prob, owner)
        check_probability("random_token_prob", random_token_prob, owner)
        if not isinstance(self_cond_train_prob, (int, float)) or not (
            0.0 <= self_cond_train_prob <= 1.0
        ):
            raise ValueError(f"{owner}: 'self_cond_train_prob' must be in [0, 1]")
        if self_token_critic and token_critic is not None:
            raise ValueError(f"{owner}: give token_critic or self_token_critic, not both")
        self.net, self.mask_id, self.steps = net, mask_id, steps
        self.num_tokens, self.max_seq_len = vocab, net.max_seq_len
        self.schedule_fn = resolve_schedule(schedule, owner)
        self.no_replace_prob, self.random_token_prob = no_replace_prob, random_token_prob
        self.can_mask_prev_unmasked = can_mask_prev_unmasked
        self.use_simple_mdlm_loss_weight = use_simple_mdlm_loss_weight
        self.self_cond, self.self_cond_train_prob = self_cond, self_cond_train_prob
        if self_cond:
            self.null_embed = nn.Parameter(torch.randn(net.emb_dim))
            self.to_self_cond = nn.Linear(net.emb_dim, net.emb_dim, bias=False)
        self.token_critic = SelfCritic(net) if self_token_critic else token_critic
        self.critic_loss_weight = critic_loss_weight

    def _self_cond(self, inp: Tensor, use_model: bool, kwargs: dict) -> dict:
        """``sum_embeds`` for self-conditioning: the model's own embeddings or the null one."""
        if not self.self_cond:
            return {}
        if use_model:
            with torch.no_grad():
                cond = self.net(inp, return_embeddings=True, **kwargs).detach()
        else:
            cond = self.null_embed.expand(*inp.shape, -1)
        return {"sum_embeds": self.to_self_cond(cond)}

    def forward(
        self,
        x: Tensor,
        only_train_generator: bool = False,
        only_train_critic: bool = False,
        generator_sample_temperature: float | None = None,
        **kwargs,
    ) -> Losses:
        """Masked-token loss of ``x`` (b, n) (module docstring), plus the critic's."""
        owner = f"{type(self).__name__}.forward"
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.max_seq_len:
            raise ValueError(f"{owner}: 'x' must be (batch, max_seq_len={self.max_seq_len}) ids")
        b, n = x.shape
        times = torch.rand(b, device=x.device)
        count = (self.schedule_fn(times) * n).clamp(min=1.0)
        mask = torch.rand(b, n, device=x.device).argsort(-1).argsort(-1) < count.unsqueeze(-1)
        inp = bert_corruption(
            x, mask, self.mask_id, self.no_replace_prob, self.random_token_prob, self.num_tokens
        )
        use_model = bool(torch.rand(()) < self.self_cond_train_prob)
        kwargs.update(self._self_cond(inp, use_model, kwargs))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not only_train_critic):
            logits = self.net(inp, **kwargs)
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        if self.use_simple_mdlm_loss_weight:
            ce = ce * mdlm_weight(self.schedule_fn, times).unsqueeze(-1)
        loss = ce[mask].mean()
        if self.token_critic is None or only_train_generator:
            return Losses(loss, loss, None)
        critic_loss = self._critic_loss(logits, x, mask, generator_sample_temperature)
        if only_train_critic:
            return Losses(critic_loss, None, critic_loss)
        return Losses(loss + self.critic_loss_weight * critic_loss, loss, critic_loss)

    def _critic_loss(self, logits, x, mask, temperature: float | None) -> Tensor:
        """The critic learns which tokens of a sampled sequence differ from the data."""
        temperature = float(torch.rand(())) if temperature is None else temperature
        noise = gumbel_noise(logits.shape, logits)
        sampled = (logits.detach() / max(temperature, 1e-10) + noise).argmax(-1)
        generated = torch.where(mask, sampled, x)
        critic_logits = self.token_critic(generated).squeeze(-1)
        return F.binary_cross_entropy_with_logits(critic_logits, (generated != x).float())

    def generate(
        self,
        batch_size: int | None = None,
        start_temperature: float = 1.0,
        filter_thres: float | None = 0.7,
        noise_level_scale: float = 1.0,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> Tensor:
        """MaskGIT decoding of ``batch_size`` sequences (b, n); one (n,) when it is None.

        Each round samples every masked token (Gumbel-max at a temperature annealed from
        ``start_temperature`` to 0, after a top-k filter keeping ``ceil((1 - filter_thres) *
        v)`` tokens), then re-masks the ``gamma(s / steps) * n`` least confident (lowest
        probability, or highest critic score plus annealed Gumbel noise) positions.
        """
        b = 1 if batch_size is None else batch_size
        check_positive_int("batch_size", b, f"{type(self).__name__}.generate")
        device = next(self.net.parameters()).device
        seq = torch.full((b, self.max_seq_len), self.mask_id, device=device, dtype=torch.long)
        mask = torch.ones_like(seq, dtype=torch.bool)
        times = torch.linspace(0.0, 1.0, self.steps + 1, device=device)[1:]
        counts = (self.schedule_fn(times) * self.max_seq_len).long().tolist()
        last_embed = None
        with inference(self.net):
            for step, count in enumerate(counts):
                cond = self._generate_cond(seq, last_embed)
                logits, last_embed = self.net(
                    seq, return_logits_and_embeddings=True, **cond, **kwargs
                )
                anneal = (self.steps - 1 - step) / self.steps
                seq, mask = unmask_step(
                    self,
                    logits,
                    seq,
                    mask,
                    count,
                    anneal,
                    start_temperature,
                    filter_thres,
                    noise_level_scale,
                    generator,
                )
        return seq[0] if batch_size is None else seq

    def _generate_cond(self, seq: Tensor, last_embed: Tensor | None) -> dict:
        if not self.self_cond:
            return {}
        cond = self.null_embed.expand(*seq.shape, -1) if last_embed is None else last_embed
        return {"sum_embeds": self.to_self_cond(cond)}
