"""The model profiler on small configs of every family (CPU, fp32), its cache, and its truth report."""

from __future__ import annotations

import json

import pytest
import torch

from galvatron_hf.adapters import config_from_dict, describe_model, supported_architectures
from galvatron_hf.profiler.model_profiler import ModelProfileOptions, profile_model
from galvatron_hf.profiler.model_schema import ModelProfile
from galvatron_hf.profiler.timing import Repeats

FAMILY_CONFIGS = {
    "llama": dict(
        model_type="llama",
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    ),
    "gpt2": dict(model_type="gpt2", vocab_size=300, n_embd=64, n_layer=3, n_head=4, n_positions=128),
    "bert": dict(
        model_type="bert",
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    ),
    "vit": dict(
        model_type="vit",
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
    ),
    "t5": dict(
        model_type="t5", vocab_size=300, d_model=64, d_kv=16, d_ff=128, num_layers=3, num_decoder_layers=3, num_heads=4
    ),
}
SEQ_LEN = 32
QUICK = Repeats(warmup=0, repeats=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one thread per process keeps timings from fighting other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(family: str):
    if FAMILY_CONFIGS[family]["model_type"] not in supported_architectures():
        pytest.skip(f"no {family} adapter registered yet")
    config = config_from_dict(dict(FAMILY_CONFIGS[family]))
    return config, describe_model(config, seq_len=None if family == "vit" else SEQ_LEN)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_profile_of_each_family_is_valid(family, tmp_path):
    config, spec = _spec(family)
    options = ModelProfileOptions(
        seq_len=spec.seq_len, micro_batch_sizes=(1, 2), dtype="fp32", repeats=QUICK, device="cpu", progress=False
    )
    profile = profile_model(config, spec, options)
    reloaded = ModelProfile.load(profile.save(tmp_path / "model.json"))
    assert reloaded == profile
    assert set(profile.layers) == {layer.kind for layer in spec.layers}
    assert profile.key.dtype == "fp32" and profile.key.model_type == spec.model_type
    for kind, layer in profile.layers.items():
        spec_layer = next(l for l in spec.layers if l.kind == kind)
        assert layer.params == spec_layer.params  # a tied weight counts once, for the embedding
        assert len(layer.measurements) == len(profile.micro_batch_sizes) * len(profile.seq_lens)
        assert all(m.forward_s > 0 and m.backward_s > 0 for m in layer.measurements)
        assert layer.forward_time_s(2) > 0 and layer.backward_time_s(2) > 0
    for block in spec.blocks:
        measured = profile.layers[block.kind]
        assert measured.activation_bytes_per_sample > measured.checkpointed_bytes_per_sample > 0
    if family == "llama":  # no dropout: saved tensors are fully determined, the adapter's model is exact
        block = spec.blocks[0]
        measured = profile.layers[block.kind]
        assert measured.activation_bytes_per_sample == pytest.approx(
            block.activation_bytes(1, 4, False, "sdpa"), rel=0.02
        )
        assert measured.checkpointed_bytes_per_sample == pytest.approx(
            block.activation_bytes(1, 4, True, "sdpa"), rel=0.02
        )


def _write_config(directory, family: str):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(FAMILY_CONFIGS[family]))
    return str(directory)


def test_cli_writes_reuses_and_forces(tmp_path, capsys):
    from galvatron_hf.cli import main

    model_dir = _write_config(tmp_path / "tiny-llama", "llama")
    args = [
        "profile",
        "model",
        "--model_name_or_path",
        model_dir,
        "--seq_len",
        "32",
        "--micro_batch_sizes",
        "1",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "m.json"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--warmup",
        "0",
        "--repeats",
        "2",
    ]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "measured vs analytic" in first.out and "decoder_block" in first.out
    assert "profile model:" in first.err and "reusing" not in first.err
    profile = ModelProfile.load(tmp_path / "m.json")
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    (tmp_path / "m.json").unlink()  # the cache alone answers the second run
    assert main(args) == 0
    second = capsys.readouterr()
    assert "reusing" in second.err and "profile model:" not in second.err
    assert ModelProfile.load(tmp_path / "m.json") == profile

    assert main(args + ["--force"]) == 0
    assert "profile model:" in capsys.readouterr().err

    assert main([a if a != "fp32" else "bf16" for a in args]) == 0  # another dtype is another key
    assert "reusing" not in capsys.readouterr().err
    assert ModelProfile.load(tmp_path / "m.json").key.dtype == "bf16"


def test_cli_reuses_a_vision_profile(tmp_path, capsys):
    """ViT's length is fixed by the image size: the cache must still recognise its sweep."""
    from galvatron_hf.cli import main

    _spec("vit")
    model_dir = _write_config(tmp_path / "tiny-vit", "vit")
    args = [
        "profile",
        "model",
        "--model_name_or_path",
        model_dir,
        "--seq_len",
        "17",
        "--micro_batch_sizes",
        "1",
        "2",
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--output",
        str(tmp_path / "vit.json"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]
    assert main(args) == 0
    assert ModelProfile.load(tmp_path / "vit.json").seq_lens == [17]
    capsys.readouterr()
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    from galvatron_hf.cli import main

    common = ["--seq_len", "32", "--output", str(tmp_path / "m.json"), "--cache_dir", str(tmp_path / "cache")]
    assert main(["profile", "model", "--model_name_or_path", str(tmp_path / "missing"), *common]) == 2
    assert "galvatron-hf profile model: error: Unknown model" in capsys.readouterr().err
    model_dir = _write_config(tmp_path / "tiny-llama", "llama")
    kernel = ["--attn_implementation", "flash_attention_2", "--device", "cpu", "--dtype", "fp32"]
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    assert main(["profile", "model", "--model_name_or_path", model_dir, *common, *kernel]) == 2
    assert "Choose --attn_implementation sdpa or eager" in capsys.readouterr().err


def test_a_fused_head_saves_what_the_planner_prices():
    """Profiled with the run's kernels, the head is timed and measured as training runs it: a chunked head keeps
    its input, not the fp32 logits, as ``priced_for_kernels`` tells the planner; a run with other kernels is
    told its profile does not match."""
    from galvatron_hf.parallel.kernels import KernelConfig, kernels_for_profiling, priced_for_kernels
    from galvatron_hf.planner.profiled_costs import profile_warnings

    config, spec = _spec("llama")
    kernels = KernelConfig(chunked_loss=True)
    hooks = kernels_for_profiling(spec, torch.device("cpu"), kernels, None)
    options = ModelProfileOptions(
        seq_len=SEQ_LEN, micro_batch_sizes=(1, 2), dtype="fp32", repeats=QUICK, device="cpu", progress=False,
        kernels=hooks.label, prepare=hooks.prepare, head_loss=hooks.head_loss,
    )
    profile = profile_model(config, spec, options)
    assert profile.key.kernels == "chunked_loss"
    fused_head = next(layer for layer in priced_for_kernels(spec, kernels, 1).layers if layer.kind == "head")
    plain_head = next(layer for layer in spec.layers if layer.kind == "head")
    measured = profile.layers["head"].activation_bytes_per_sample
    assert measured == pytest.approx(fused_head.activation_bytes(1, 4, False, "sdpa"), rel=0.05)
    assert measured < plain_head.activation_bytes(1, 4, False, "sdpa") / 3
    assert profile_warnings(profile, spec, "fp32", "sdpa", kernels="chunked_loss") == []
    mismatch = profile_warnings(profile, spec, "fp32", "sdpa", kernels="liger")
    assert any("kernels 'chunked_loss', this run uses 'liger'" in line for line in mismatch)
