"""The speech families' tiny HuBERT encoder is one table (zoo.models.configs.HUBERT_TINY_ENCODER)."""
from zoo.models.configs import HUBERT_BASE_ENCODER, HUBERT_TINY_ENCODER
from zoo.registry import get_family

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "conv_dim": [32, 32, 32, 32, 32, 32, 32], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4, "layerdrop": 0.0}


def test_tiny_encoder_values_and_frame_rate():
    assert HUBERT_TINY_ENCODER == TINY
    assert set(HUBERT_TINY_ENCODER) <= set(HUBERT_BASE_ENCODER)  # overrides of the base, nothing new


def test_sylber_and_hubertopic_tiny_use_it_on_their_own_base():
    for name in ("sylber", "hubertopic"):
        family = get_family(name)
        base, tiny = family.make_config("base")["encoder"], family.make_config("tiny")["encoder"]
        assert tiny == {**base, **TINY}, name
        assert tiny["conv_stride"] == base["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]


def test_an_unknown_encoder_key_names_the_family_and_lists_the_fields():
    import pytest

    from zoo.errors import ConfigError
    from zoo.models.hubert import HubertConfig

    with pytest.raises(ConfigError, match=r"^HubertConfig has no field\(s\) \['bogus'\]; known fields: \["):
        HubertConfig.from_dict({"bogus": 1})
    for name, label in (("sylber", "Sylber"), ("hubertopic", "HuBERTopic")):
        family = get_family(name)
        config = family.make_config("tiny")
        config["encoder"]["bogus"] = 1
        with pytest.raises(ConfigError, match=rf"^{label} config 'encoder' has argument\(s\) \['bogus'\] HubertConfig "
                                              r"does not take; known fields: \[.*'hidden_size'"):
            family.build(config)
