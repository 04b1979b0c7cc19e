import pytest

from galvatron_hf.profiler.model_schema import (
    LayerMeasurement,
    LayerProfile,
    ModelProfile,
    ModelProfileError,
    ProfileKey,
    TokenFit,
    config_hash,
)


def make_profile(dtype: str = "bf16") -> ModelProfile:
    point = LayerMeasurement(2, 128, 128, 1e-3, 2e-3, 1.1e-3, 3.1e-3, 4096, 512, None, None)
    layer = LayerProfile(
        kind="decoder_block",
        name="decoder_block.0",
        modules=["model.layers.0"],
        param_bytes=1000,
        params=500,
        seq_len=128,
        kv_seq_len=128,
        forward=TokenFit(1e-5, 2e-6, 1e-10),
        backward=TokenFit(2e-5, 4e-6, 2e-10),
        recompute=TokenFit(1e-5, 2e-6, 1e-10),
        activation_bytes_per_sample=2048.0,
        checkpointed_bytes_per_sample=256.0,
        measurements=[point],
    )
    key = ProfileKey("abc", "llama", dtype, "cpu", "sdpa", {"torch": "2.11.0", "transformers": "5.17.0"})
    return ModelProfile(
        key=key,
        model_name="tiny",
        architecture="LlamaForCausalLM",
        seq_len=128,
        micro_batch_sizes=[1, 2],
        seq_lens=[64, 128],
        layers={"decoder_block": layer},
    )


def test_round_trip(tmp_path):
    profile = make_profile()
    assert ModelProfile.load(profile.save(tmp_path / "m.json")) == profile
    layer = profile.layer("decoder_block")
    assert layer.forward_time_s(2) == pytest.approx(1e-5 + 2e-6 * 256 + 1e-10 * 256 * 128)
    assert layer.measurements[0].recompute_s == pytest.approx(1.1e-3)


def test_rejects_other_files_and_missing_layers():
    data = make_profile().to_dict()
    with pytest.raises(ModelProfileError, match="schema"):
        ModelProfile.from_dict({**data, "schema": "galvatron-hf/hardware"})
    with pytest.raises(ModelProfileError, match="version"):
        ModelProfile.from_dict({**data, "version": 99})
    with pytest.raises(ModelProfileError, match="no 'head' layer"):
        make_profile().layer("head")
    broken = make_profile().to_dict()
    broken["layers"]["decoder_block"]["forward"] = {"intercept_s": 0.0, "per_token_s": 0.0}
    with pytest.raises(ModelProfileError, match="forward time must be > 0"):
        ModelProfile.from_dict(broken)


def test_key_mismatches_name_each_difference():
    mine, other = make_profile().key, make_profile("fp32").key
    assert mine.mismatches(mine) == []
    assert mine.mismatches(other) == ["dtype: profile has 'bf16', wanted 'fp32'"]
    assert mine.digest() != other.digest()


def test_config_hash_ignores_layer_count_and_names_only():
    base = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "_name_or_path": "a"}
    assert config_hash(base) == config_hash({**base, "num_hidden_layers": 32, "_name_or_path": "b"})
    assert config_hash(base) != config_hash({**base, "hidden_size": 128})
