"""Quickstart: a small decoder-only language model trained for 20 steps on CPU.

A fixed batch of random tokens is used, so a falling loss shows the model fitting it
(next-token prediction; the starting loss is about ln(256) = 5.55).

Run: python examples/quickstart.py
"""

import torch
import torch.nn.functional as F

from x_attn import Decoder, TransformerWrapper

NUM_TOKENS = 256
SEQ_LEN = 128
BATCH = 8
STEPS = 20


def main() -> None:
    torch.manual_seed(0)
    model = TransformerWrapper(
        num_tokens=NUM_TOKENS,
        max_seq_len=SEQ_LEN,
        attn_layers=Decoder(dim=64, depth=2, heads=4, rotary_pos_emb=True),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")

    # (b, n + 1) tokens: inputs are x[:, :-1], targets are x[:, 1:]
    x = torch.randint(0, NUM_TOKENS, (BATCH, SEQ_LEN + 1))

    model.train()
    for step in range(1, STEPS + 1):
        logits = model(x[:, :-1])  # (b, n, num_tokens)
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 5 == 0:
            print(f"step {step:2d}  loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
