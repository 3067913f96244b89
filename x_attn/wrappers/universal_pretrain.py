"""UniversalPretrainWrapper: pretraining on iterated random computation (Bloem, "Universal
pre-training by iterated random computation", arXiv 2506.20057).

A buffer holds ``buffer_size`` token sequences, first random noise
(:func:`x_attn.wrappers.synthetic_data.random_sequences`). Each call (one training step):

1. enrich: ``batch_size`` buffer rows are read as conditions by a random recurrent program
   (:class:`x_attn.wrappers.synthetic_data.SyntheticDataGenerator`), which then continues a fresh
   random seed of ``seed_length`` tokens to ``seq_len`` tokens; the results replace those rows,
   so data passes through random programs again and again;
2. ``num_reset`` random rows are replaced by fresh noise, so simple data keeps coming in;
3. every ``reset_turing_machine_every`` steps (0: never) the program gets new random weights;
4. the model is trained on ``batch_size`` other random rows with the next-token loss of
   :class:`x_attn.wrappers.autoregressive.AutoregressiveWrapper`, which is returned.

Shape legend: b batch, n sequence (seq_len), s seed length, B buffer rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from x_attn.utils import check_positive_int, default
from x_attn.wrappers.autoregressive import AutoregressiveWrapper
from x_attn.wrappers.synthetic_data import SyntheticDataGenerator, random_sequences

__all__ = ["UniversalPretrainWrapper"]

_OWNER = "UniversalPretrainWrapper"


class UniversalPretrainWrapper(nn.Module):
    """Universal pretraining of a token model (see the module docstring).

    Args:
        model: a causal TransformerWrapper.
        data_generator: the random program (default: an LSTM of the model's width).
        buffer_size: rows in the buffer (default ``20 * batch_size``).
        num_reset: rows replaced by noise at each step.
        batch_size: rows enriched, and rows trained on, at each step.
        seq_len: length of every sequence (the model sees ``seq_len - 1`` inputs).
        seed_length: random tokens that start each enriched sequence.
        reset_turing_machine_every: new program weights every this many steps (0: never).
        keep_buffer_on_cpu: keep the buffer out of the module's buffers (it stays on the CPU
            when the model moves, and out of the state_dict).
    """

    def __init__(
        self,
        model: nn.Module,
        data_generator: nn.Module | None = None,
        buffer_size: int | None = None,
        num_reset: int = 20,
        batch_size: int = 32,
        seq_len: int = 512,
        seed_length: int = 8,
        reset_turing_machine_every: int = 0,
        keep_buffer_on_cpu: bool = False,
    ) -> None:
        super().__init__()
        self.ar_wrapper = AutoregressiveWrapper(model)
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            check_positive_int(name, value, _OWNER)
        buffer_size = default(buffer_size, 20 * batch_size)
        _check_sizes(buffer_size, num_reset, batch_size, seq_len, seed_length)
        if reset_turing_machine_every < 0:
            raise ValueError(f"{_OWNER}: 'reset_turing_machine_every' must be >= 0 (0: never)")
        if seq_len - 1 > model.max_seq_len:
            raise ValueError(
                f"{_OWNER}: the model reads seq_len - 1 = {seq_len - 1} tokens, beyond its "
                f"max_seq_len={model.max_seq_len}; lower seq_len"
            )
        self.num_tokens = model.num_tokens
        self.data_generator = default(
            data_generator,
            SyntheticDataGenerator(model.attn_layers.dim, model.num_tokens, max_seq_len=seq_len),
        )
        self.buffer_size, self.num_reset, self.batch_size = buffer_size, num_reset, batch_size
        self.seq_len, self.seed_length = seq_len, seed_length
        self.reset_turing_machine_every = reset_turing_machine_every
        half = buffer_size // 2
        noise = random_sequences(model.num_tokens, seq_len, buffer_size - half, half)
        noise = noise[torch.randperm(buffer_size)]
        self.keep_buffer_on_cpu = keep_buffer_on_cpu
        if keep_buffer_on_cpu:
            self.synth_data_buffer = noise
        else:
            self.register_buffer("synth_data_buffer", noise)
        self.register_buffer("step", torch.tensor(0))

    @property
    def device(self) -> torch.device:
        return next(self.ar_wrapper.parameters()).device

    def get_rand_sequences_from_buffer(self, size: int | None = None) -> Tensor:
        """``size`` (default batch_size) random rows of the buffer (b, n)."""
        rows = torch.randperm(self.buffer_size)[: default(size, self.batch_size)]
        return self.synth_data_buffer[rows.to(self.synth_data_buffer.device)]

    @torch.no_grad()
    def enrich_(self) -> tuple[Tensor, Tensor]:
        """Steps 1-3 of the module docstring; returns the rows enriched (b,) and their seeds
        (b, s)."""
        buffer, b = self.synth_data_buffer, self.batch_size
        rows = torch.randperm(self.buffer_size)[:b].to(buffer.device)
        gen_device = next(self.data_generator.parameters()).device
        seed = torch.randint(0, self.num_tokens, (b, self.seed_length), device=gen_device)
        condition = buffer[rows].to(gen_device)
        buffer[rows] = self.data_generator.generate(self.seq_len, seed, condition).to(buffer)
        reset = torch.randperm(self.buffer_size)[: self.num_reset].to(buffer.device)
        half = self.num_reset // 2
        fresh = random_sequences(self.num_tokens, self.seq_len, self.num_reset - half, half)
        buffer[reset] = fresh.to(buffer)
        self.step.add_(1)
        every = self.reset_turing_machine_every
        if every and int(self.step) % every == 0:
            self.data_generator.reset_()
        return rows, seed

    def forward(self) -> Tensor:
        """One step: enrich the buffer, then the next-token loss on random buffer rows."""
        self.enrich_()
        batch = self.get_rand_sequences_from_buffer().to(self.device)
        return self.ar_wrapper(batch)


def _check_sizes(buffer_size: int, num_reset: int, batch: int, seq_len: int, seed: int) -> None:
    check_positive_int("buffer_size", buffer_size, _OWNER)
    check_positive_int("seed_length", seed, _OWNER)
    if isinstance(num_reset, bool) or not isinstance(num_reset, int) or num_reset < 0:
        raise ValueError(f"{_OWNER}: 'num_reset' must be an int >= 0, got {num_reset!r}")
    if max(batch, num_reset) > buffer_size:
        raise ValueError(
            f"{_OWNER}: batch_size ({batch}) and num_reset ({num_reset}) must not exceed "
            f"buffer_size ({buffer_size})"
        )
    if not 1 <= seed <= seq_len or seq_len < 2:
        raise ValueError(
            f"{_OWNER}: need seq_len >= 2 and seed_length <= seq_len, got seq_len={seq_len}, "
            f"seed_length={seed}"
        )
