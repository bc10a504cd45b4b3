import pytest
import torch

from zoo.errors import ConfigError
from zoo.vision.selftok.diti import DiTi, diti_indices, token_position
from zoo.vision.selftok.sampling import FlowSchedule, decode_token_indices

RELEASED = DiTi([200, 400, 600, 800, 1000], [192, 184, 72, 48, 16])


@pytest.mark.parametrize("diti", [RELEASED, DiTi([500, 1000], [12, 4]), DiTi("100,600,1000", "2,10,4")],
                         ids=["released-512", "tiny", "string-config"])
def test_monotone_and_covers_every_index(diti):
    t = torch.arange(0, 1001)
    index = diti.to_indices(t)
    assert index.dtype == torch.long
    assert bool((index[1:] >= index[:-1]).all())
    assert set(index.tolist()) == set(range(diti.K))
    assert int(index[0]) == 0 and int(index[-1]) == diti.K - 1
    # float times agree with integer ones and stay monotone
    tf = torch.linspace(0, 1000, 20001)
    indexf = diti.to_indices(tf)
    assert bool((indexf[1:] >= indexf[:-1]).all())
    assert torch.equal(diti.to_indices(t.float()), index)


@pytest.mark.parametrize("diti", [RELEASED, DiTi([500, 1000], [12, 4])], ids=["released-512", "tiny"])
def test_per_stage_counts_are_exact(diti):
    lows = [0] + diti.stages[:-1]
    acc = 0
    for low, high, k in zip(lows, diti.stages, diti.k_per_stage):
        reached = diti.to_indices(torch.arange(low, high)).tolist()
        assert sorted(set(reached)) == list(range(acc, acc + k)), (low, high)
        acc += k
    assert acc == diti.K


def test_released_schedule_values():
    t = torch.tensor([0, 1, 100, 199, 200, 201, 399, 400, 500, 600, 799, 800, 999, 1000])
    expected = [0, 0, 96, 191, 192, 192, 375, 376, 412, 448, 495, 496, 511, 511]
    assert RELEASED.to_indices(t).tolist() == expected
    assert diti_indices(t).tolist() == expected
    # every integer t: acc + floor(k (t - lo) / (hi - lo)), clamped to K - 1
    bounds = [0, 200, 400, 600, 800, 1000]
    for value in range(1001):
        acc, want = 0, 0
        for low, high, k in zip(bounds[:-1], bounds[1:], RELEASED.k_per_stage):
            if value >= low:
                want = acc + (k * (value - low)) // (high - low)
            acc += k
        assert int(RELEASED.to_indices(torch.tensor(value))) == min(want, 511)
    assert RELEASED.visible_count(torch.tensor([0, 1000])).tolist() == [1, 512]


def test_visibility_mask():
    mask = RELEASED.visible_mask(torch.tensor([0.0, 200.0, 1000.0]))
    assert mask.shape == (3, 512)
    assert mask.sum(1).tolist() == [1, 193, 512]
    assert bool(mask[1, :193].all()) and not bool(mask[1, 193:].any())
    assert token_position(torch.arange(3)).tolist() == [1000, 1008, 1016]


def test_decoding_grid_truncates_like_the_release():
    schedule = FlowSchedule(50)
    assert schedule.scheduled_t.dtype == torch.float32
    times = schedule.timestep_map.long().tolist()
    # float32 linspace * 1000, truncated: 459, 399, 359, 299, 199, 179, 99 instead of 460, 400, ...
    assert times[:3] == [1000, 980, 960]
    for step, value in [(27, 459), (30, 399), (32, 359), (35, 299), (40, 199), (41, 179), (45, 99), (49, 20)]:
        assert times[step] == value
    indices = decode_token_indices(RELEASED, 50).tolist()
    assert indices == [511, 510, 508, 507, 505, 504, 502, 500, 499, 497, 496, 491, 486, 481, 476, 472, 467, 462, 457,
                       452, 448, 440, 433, 426, 419, 412, 404, 397, 390, 383, 375, 357, 338, 320, 302, 283, 265, 247,
                       228, 210, 191, 171, 153, 134, 115, 95, 76, 57, 38, 19]
    assert indices[40] == 191 and indices[30] == 375  # t = 0.2 and 0.4 see 192 and 376 tokens, not 193 and 377
    assert torch.equal(schedule.scheduled_t[1:], schedule.scheduled_t_prev[:-1])


def test_bad_schedules_are_config_errors():
    with pytest.raises(ConfigError, match="sums to"):
        DiTi([500, 1000], [12, 4], num_tokens=15)
    with pytest.raises(ConfigError, match="differ in length"):
        DiTi([500, 1000], [16])
    with pytest.raises(ConfigError, match="increase"):
        DiTi([600, 500], [8, 8])
    with pytest.raises(ConfigError, match="integers"):
        DiTi(["a"], [1])
