"""Random computation for universal pretraining (Bloem, "Universal pre-training by iterated
random computation", arXiv 2506.20057).

A randomly initialised recurrent network (LSTM, or GRU) over a token vocabulary is a cheap random
program: fed a sequence, it continues it. Passing random sequences through such programs again
and again gives data with computable structure, which a transformer can be pretrained on before
it sees any real data (:mod:`x_attn.wrappers.universal_pretrain`).

* :func:`random_sequences`: the starting noise, uniform random tokens and constant sequences.
* :class:`SyntheticDataGenerator`: the random program; ``generate`` reads a condition, then
  continues a seed, sampling at a low temperature (greedy at 0). It is never trained.

Shape legend: b batch, n sequence, d embedding dim, v vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_nonnegative, check_positive_int, default

__all__ = ["SyntheticDataGenerator", "random_sequences"]

_OWNER = "SyntheticDataGenerator"


def random_sequences(
    num_tokens: int,
    seq_len: int,
    num_random: int,
    num_constant: int,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(num_random + num_constant, seq_len) ids: uniform random rows, then rows repeating one
    random token (in that order)."""
    uniform = torch.randint(0, num_tokens, (num_random, seq_len), generator=generator)
    constant = torch.randint(0, num_tokens, (num_constant, 1), generator=generator)
    return torch.cat((uniform, constant.expand(num_constant, seq_len))).to(device)


class SyntheticDataGenerator(nn.Module):
    """A random recurrent token model (see the module docstring).

    Args:
        dim: embedding width d.
        num_tokens: vocabulary size v.
        max_seq_len: longest sequence ``generate`` is asked for.
        hidden_size: recurrent state width (default d).
        use_gru: a GRU instead of an LSTM.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        max_seq_len: int = 512,
        hidden_size: int | None = None,
        use_gru: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_tokens", num_tokens), ("max_seq_len", max_seq_len)):
            check_positive_int(name, value, _OWNER)
        hidden_size = default(hidden_size, dim)
        check_positive_int("hidden_size", hidden_size, _OWNER)
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(num_tokens, dim)
        self.net = (nn.GRU if use_gru else nn.LSTM)(dim, hidden_size, batch_first=True)
        self.to_logits = nn.Linear(hidden_size, num_tokens, bias=False)
        self.requires_grad_(False)  # a random program: never trained

    def reset_(self) -> None:
        """Draw new random weights (a new program)."""
        for module in (self.embed, self.net, self.to_logits):
            module.reset_parameters()

    def forward(self, ids: Tensor, hiddens: object = None) -> tuple[Tensor, object]:
        """(b, n) ids -> logits (b, n, v) and the recurrent state after them."""
        out, hiddens = self.net(self.embed(ids), hiddens)
        return self.to_logits(out), hiddens

    @torch.no_grad()
    def generate(
        self,
        length: int,
        seed: Tensor,
        condition: Tensor | None = None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(b, length) ids: ``seed`` (b, s) continued to ``length`` tokens after reading
        ``condition`` (b, c); sampled at ``temperature`` (0: the most likely token)."""
        check_nonnegative("temperature", temperature, _OWNER)
        if not 1 <= seed.shape[1] <= length <= self.max_seq_len:
            raise ValueError(
                f"{_OWNER}.generate: need 1 <= seed length ({seed.shape[1]}) <= length "
                f"({length}) <= max_seq_len ({self.max_seq_len})"
            )
        prefix = seed if condition is None else torch.cat((condition, seed), dim=1)
        logits, hiddens = self(prefix)
        out = [seed]
        for _ in range(length - seed.shape[1]):
            last = logits[:, -1]
            if temperature == 0:
                token = last.argmax(dim=-1, keepdim=True)
            else:
                probs = (last / temperature).softmax(dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)
            out.append(token)
            logits, hiddens = self(token, hiddens)
        return torch.cat(out, dim=1)
