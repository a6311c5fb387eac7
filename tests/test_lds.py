import numpy as np
import pytest
from scipy.stats import rankdata

from compattr.scores import columnwise_pearson, lds_scores


def test_perfect_reversed_and_constant_predictions():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 3))
    predicted = np.stack([np.exp(true[:, 0]), -true[:, 1], np.full(50, 2.0)], axis=1)
    spearman, pearson = lds_scores(predicted, true)
    np.testing.assert_allclose(spearman, [1.0, -1.0, 0.0], atol=1e-12)
    assert pearson[0] < 1.0  # monotone but not linear
    np.testing.assert_allclose(pearson[1:], [-1.0, 0.0], atol=1e-12)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(1)
    true = rng.integers(0, 5, size=(40, 4)).astype(float)
    predicted = true + rng.normal(size=(40, 4))
    spearman, pearson = lds_scores(predicted, true)
    for j in range(4):
        assert spearman[j] == pytest.approx(spearmanr(predicted[:, j], true[:, j]).statistic)
        assert pearson[j] == pytest.approx(pearsonr(predicted[:, j], true[:, j]).statistic)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        columnwise_pearson(np.zeros((3, 2)), np.zeros((3, 3)))


@pytest.mark.parametrize("n_masks", [1, 2])
def test_fewer_than_three_masks_are_refused(n_masks):
    """Over one or two masks a rank correlation is +-1 or 0 whatever the fit: refused, not scored."""
    with pytest.raises(ValueError, match=f"{n_masks} masks"):
        lds_scores(np.arange(n_masks * 2.0).reshape(n_masks, 2), np.ones((n_masks, 2)))
    with pytest.raises(ValueError, match="must both be"):
        lds_scores(np.zeros((5, 2)), np.zeros((5, 3)))


def test_true_ranks_given_once_score_as_ranked_each_time():
    """A caller scoring many predictions ranks the true outputs once; the scores are the same."""
    rng = np.random.default_rng(2)
    true = np.round(rng.normal(size=(50, 4)), 1)  # ties among the true outputs
    ranks = rankdata(true, axis=0)
    for _ in range(3):
        predicted = true + rng.normal(size=true.shape)
        np.testing.assert_array_equal(lds_scores(predicted, true, ranks)[0], lds_scores(predicted, true)[0])
    with pytest.raises(ValueError, match="true_ranks"):
        lds_scores(true, true, ranks[:10])
