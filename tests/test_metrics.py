import pytest

from bort.finetune import metrics as M


def test_classification_metrics_hand_computed():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # tp=2 fp=1 fn=1 tn=1
    assert M.accuracy(preds, labels) == pytest.approx(0.6)
    assert M.f1(preds, labels) == pytest.approx(4 / 6)
    assert M.matthews_corr(preds, labels) == pytest.approx(1 / 6)
    assert M.matthews_corr([1, 1, 1], [1, 0, 1]) == 0.0  # empty marginal
    assert M.f1([0, 0], [0, 0]) == 0.0


def test_correlations_hand_computed():
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / (2 * 42 / 9) ** 0.5)
    assert list(M.rankdata([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / 22.5 ** 0.5)


def test_macro_f1_and_multirc():
    assert M.macro_f1([0, 1, 2, 2], [0, 1, 1, 2], num_classes=3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    f1a, em = M.multirc_scores([[1, 0], [1, 1, 0]], [[1, 0], [1, 0, 0]])
    assert f1a == pytest.approx(0.8) and em == pytest.approx(0.5)


def test_record_normalization_f1_em():
    assert M.normalize_answer("The  Harbor-Town!") == "harbortown"
    assert M.normalize_answer("an apple a day") == "apple day"
    assert M.token_f1("the river bridge", "River Bridge opens") == pytest.approx(0.8)
    f1, em = M.record_scores(["Harbor Town", "Summer"], [["harbor town", "x"], ["Winter"]])
    assert f1 == pytest.approx(0.5) and em == pytest.approx(0.5)


def test_gender_parity_and_multirc_empty_question():
    assert M.gender_parity([1, 1, 0, 1, 0, 0, 1, 1]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.gender_parity([1, 0, 1])
    # a question without answer options is no exact match (it used to count as one)
    assert M.multirc_scores([[1], []], [[1], []])[1] == pytest.approx(0.5)
