"""model.save / x_attn.load: safetensors + JSON round trip over the flag registry; no pickle."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from flag_models import build, tokens

import x_attn
from x_attn import (
    ContinuousTransformerWrapper,
    Decoder,
    Encoder,
    TransformerWrapper,
    ViTransformerWrapper,
)
from x_attn.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_metadata
from x_attn.registry import FLAGS


@pytest.mark.parametrize("case", FLAGS, ids=lambda c: c.name)
def test_every_flag_round_trips_with_identical_logits(case, tmp_path):
    model = build(case)  # float64, parameters jittered away from their initial values
    folder = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    restored = x_attn.load(folder)
    assert not restored.training
    assert next(restored.parameters()).dtype == torch.float64
    x = tokens(2, 7)
    with torch.no_grad():
        assert torch.equal(model(x), restored(x))


def test_other_model_classes_and_metadata(tmp_path):
    torch.manual_seed(0)
    vit = ViTransformerWrapper(
        image_size=8, patch_size=4, num_classes=3, attn_layers=Encoder(dim=16, depth=1, heads=2)
    ).eval()
    vit.save(tmp_path / "vit", metadata={"labels": ["a", "b", "c"]})
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(vit(images), x_attn.load(tmp_path / "vit")(images))
    assert load_metadata(tmp_path / "vit") == {"labels": ["a", "b", "c"]}
    cont = ContinuousTransformerWrapper(
        max_seq_len=8, dim_in=3, dim_out=5, attn_layers=Decoder(dim=16, depth=1, ff_glu=True)
    ).eval()
    cont.save(tmp_path / "cont")
    x = torch.randn(2, 6, 3)
    # a file inside the folder names the checkpoint too
    assert torch.equal(cont(x), x_attn.load(tmp_path / "cont" / CONFIG_NAME)(x))


def _tiny():
    return TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=8, depth=1))


class _Exploit:
    """Unpickling this would create a file: the test checks that it never happens."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_and_torch_save_files_are_refused_unopened(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "model.pkl"
    crafted.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="pickle file.*never unpickles.*arbitrary code"):
        x_attn.load(crafted)
    torch.save({"state_dict": _tiny().state_dict(), "x": _Exploit(marker)}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="torch.save.*never unpickles"):
        x_attn.load(tmp_path / "m.pt")
    # a checkpoint folder whose weights file was swapped for a pickle
    folder = _tiny().save(tmp_path / "ckpt")
    (folder / WEIGHTS_NAME).write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ValueError, match="refusing .*model.safetensors.*pickle"):
        x_attn.load(folder)
    assert not marker.exists()


@pytest.mark.parametrize(("start", "modulus"), [(0x80, 256), (0x4B50, 65536)], ids=["x80", "PK"])
def test_safetensors_header_length_that_looks_like_a_pickle_still_loads(start, modulus, tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 (the
    pickle opcode) or "PK" must not make a valid weights file look like a pickle."""
    model = _tiny()
    folder = model.save(tmp_path / "ckpt")
    raw = (folder / WEIGHTS_NAME).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + size].rstrip(b" ")
    header += b" " * ((start - len(header)) % modulus)  # JSON allows trailing spaces
    assert len(header) % modulus == start
    length = len(header).to_bytes(8, "little")
    (folder / WEIGHTS_NAME).write_bytes(length + header + raw[8 + size :])
    x = torch.randint(0, 10, (1, 5))
    with torch.no_grad():
        assert torch.equal(x_attn.load(folder)(x), model.eval()(x))


def test_broken_checkpoints_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at"):
        x_attn.load(tmp_path / "nowhere")
    folder = _tiny().save(tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_NAME).read_text())
    other = TransformerWrapper(num_tokens=10, max_seq_len=8, attn_layers=Decoder(dim=8, depth=2))
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "model": x_attn.to_config(other)}))
    with pytest.raises(ValueError, match="does not match the architecture.*missing"):
        x_attn.load(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        x_attn.load(folder)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        x_attn.load(folder)
    os.remove(folder / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        x_attn.load(folder)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not an x_attn checkpoint"):
        x_attn.load(tmp_path / "weights.bin")
    with pytest.raises(TypeError, match="JSON serializable"):
        _tiny().save(tmp_path / "bad", metadata={"x": object()})
    assert not (tmp_path / "bad").exists()  # nothing half-written
