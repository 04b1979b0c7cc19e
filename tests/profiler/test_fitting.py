import pytest

from galvatron_hf.profiler.fitting import FitError, fit_latency_bandwidth, fit_tokens


def test_latency_bandwidth_recovered_from_a_sweep():
    sizes = [2**k for k in range(10, 26, 2)]
    times = [20e-6 + n / 50e9 for n in sizes]
    fit = fit_latency_bandwidth(sizes, times)
    assert fit.latency_s == pytest.approx(20e-6, rel=1e-6)
    assert fit.bandwidth_Bps == pytest.approx(50e9, rel=1e-6)
    assert fit.max_relative_error < 1e-9


def test_noisy_flat_sweep_still_gives_positive_bandwidth():
    # all sizes within timer jitter: the slope comes out negative; the fallback stays positive and bounding
    sizes, times = [1024, 2048, 4096], [30e-6, 29e-6, 28e-6]
    fit = fit_latency_bandwidth(sizes, times)
    assert fit.bandwidth_Bps > 0 and fit.latency_s >= 0
    assert fit.latency_s + 4096 / fit.bandwidth_Bps >= 28e-6 * 0.999


def test_fit_needs_two_positive_points():
    with pytest.raises(FitError):
        fit_latency_bandwidth([1024], [1e-5])
    with pytest.raises(FitError):
        fit_latency_bandwidth([1024, 2048], [1e-5, 0.0])


def test_token_fit_separates_the_attention_term():
    points = [(b, s) for b in (1, 2, 4) for s in (256, 512, 1024)]
    truth = lambda b, s: 1e-4 + 2e-7 * b * s + 3e-11 * b * s * s  # noqa: E731
    fit = fit_tokens(
        [b for b, _ in points],
        [s for _, s in points],
        [s for _, s in points],
        [truth(b, s) for b, s in points],
        attention=True,
    )
    assert (fit.intercept_s, fit.per_token_s, fit.per_attention_s) == pytest.approx((1e-4, 2e-7, 3e-11), rel=1e-4)
    assert fit.time_s(8, 2048) == pytest.approx(truth(8, 2048), rel=1e-4)


def test_token_fit_drops_terms_that_come_out_negative():
    # one sequence length: the attention term is collinear with tokens and is not fitted
    fit = fit_tokens([1, 2, 4], [128] * 3, [128] * 3, [1e-3, 2e-3, 4e-3], attention=True)
    assert fit.per_attention_s == 0.0 and fit.intercept_s >= 0
    assert fit.time_s(8, 128) == pytest.approx(8e-3, rel=1e-6)
    # time falling with size (noise) never yields a negative coefficient
    fit = fit_tokens([1, 2, 4], [64] * 3, [64] * 3, [3e-3, 2e-3, 1e-3], attention=False)
    assert fit.per_token_s >= 0 and fit.intercept_s >= 0
