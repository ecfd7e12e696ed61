"""nag_jax.reporting: statistics over seeds (hand-computed values, scipy's paired t as an
independent oracle), the one single-seed rule (SE = nan), and the markdown tables on fixed
numbers (the demo's table layout, digit for digit)."""

import math

import numpy as np
import pytest
import scipy.stats

from nag_jax.reporting import stats, tables


def test_standard_error_by_hand():
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, var (ddof 1) 5/3
    assert stats.standard_error([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3 / 4))
    assert stats.mean_se([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 12)))
    # per column of (seeds, levels): [1, 3] -> sd sqrt(2), SE 1; [2, 6] -> sd sqrt(8), SE 2
    np.testing.assert_allclose(stats.standard_error([[1.0, 2.0], [3.0, 6.0]], axis=0), [1.0, 2.0])


def test_one_seed_has_nan_standard_error_and_t():
    mean, se = stats.mean_se([3.0])
    assert mean == 3.0 and math.isnan(se)
    se_levels = stats.standard_error(np.ones((1, 5)), axis=0)
    assert se_levels.shape == (5,) and np.isnan(se_levels).all()
    d = stats.paired_difference([2.0], [1.0])
    assert d["mean"] == 1.0 and math.isnan(d["se"]) and math.isnan(d["t"]) and d["dof"] == 0


def test_paired_difference_is_scipys_paired_t_with_n_minus_1_dof():
    a = np.array([10.0, 12.5, 9.0, 14.0, 11.0])
    b = np.array([9.5, 11.0, 9.5, 12.0, 10.0])
    d = stats.paired_difference(a, b)
    ref = scipy.stats.ttest_rel(a, b)
    assert d["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert d["dof"] == ref.df == 4
    # differences 0.5, 1.5, -0.5, 2, 1: mean 0.9, sum of squared deviations 3.7, SE sqrt(3.7/4/5)
    assert d["mean"] == pytest.approx(0.9) and d["se"] == pytest.approx(math.sqrt(3.7 / 20))
    # identical rows: SE 0 gives no t (nan), never a division by zero
    assert math.isnan(stats.paired_difference(a, a)["t"])


def _rows():
    row = lambda cfg, nag, iv: dict(name="", cfg_scale=cfg, nag_scale=nag, nag_interval=iv)
    return {
        "a": dict(
            row=row(1.5, 1.0, (0.0, 0.5)),
            per_seed=dict(
                class_accuracy=[0.5, 0.7],
                proxy_fd=[10.0, 12.0],
                precision=[0.2, 0.4],
                recall=[0.9, 0.9],
                images_per_sec=[100, 200],
            ),
        ),  # fmt: skip
        "b": dict(
            row=row(1.0, 0.0, (0.0, 1.0)),
            per_seed=dict(
                class_accuracy=[0.4, 0.4],
                proxy_fd=[13.0, 17.0],
                precision=[0.1, 0.1],
                recall=[0.8, 1.0],
                images_per_sec=[50, 50],
            ),
        ),  # fmt: skip
    }


def test_the_demo_table_on_fixed_numbers():
    results = _rows()
    summary = stats.summarize_rows(results, [("a", "b"), ("a", "absent")], tables.ROW_METRICS)
    assert list(summary["differences"]) == ["a - b"]
    assert summary["differences"]["a - b"]["proxy_fd"]["dof"] == 1
    # a: acc 0.5, 0.7 -> 0.6 +- 0.1 (sd sqrt(0.02), / sqrt 2); FD 10, 12 -> 11 +- 1; ...
    # a - b per seed: acc 0.1, 0.3; FD -3, -5 -> -4 +- 1, t = -4; recall 0.1, -0.1 -> 0 +- 0.1
    expected = [
        "mean +- standard error over 2 seeds x 8 images",
        "",
        "| setting | s_cfg | w_nag | class acc | proxy FD | precision | recall | images/s |",
        "|---|---|---|---|---|---|---|---|",
        "| a | 1.5 | 1 on [0, 0.5] | 0.600 +- 0.100 | 11.00 +- 1.00 | 0.300 +- 0.100 | "
        "0.900 +- 0.000 | 150.0 |",
        "| b | 1 | 0 | 0.400 +- 0.000 | 15.00 +- 2.00 | 0.100 +- 0.000 | 0.900 +- 0.100 | 50.0 |",
        "",
        "| paired difference | class acc | proxy FD (z) | precision | recall |",
        "|---|---|---|---|---|",
        "| a - b | +0.200 +- 0.100 | -4.00 +- 1.00 (-4.0) | +0.200 +- 0.100 | +0.000 +- 0.100 |",
    ]
    assert tables.guidance_rows_table(results, summary, 2, 8) == "\n".join(expected)


def test_the_demo_table_with_one_seed_prints_nan_standard_errors():
    results = {
        k: dict(row=r["row"], per_seed={m: v[:1] for m, v in r["per_seed"].items()})
        for k, r in _rows().items()
    }
    summary = stats.summarize_rows(results, [("a", "b")], tables.ROW_METRICS)
    text = tables.guidance_rows_table(results, summary, 1, 8)
    assert "| a | 1.5 | 1 on [0, 0.5] | 0.500 +- nan | 10.00 +- nan |" in text
    assert "| a - b | +0.100 +- nan | -3.00 +- nan (+nan) |" in text


def test_sweep_table_shows_the_se_only_where_there_is_one():
    point = lambda name, fd, se: dict(name=name, mean={"fid": fd}, se={"fid": se},
                                      images_per_s=12.34)  # fmt: skip
    results = dict(
        metric="fid", metric_name="proxy_fd", val_seeds=[], report_seeds=[7], num_images=4,
        points=[point("p1", 12.3456, float("nan")), point("p2", 1.5, 0.25)],
    )  # fmt: skip
    lines = tables.sweep_table(results).splitlines()
    assert lines[2:] == [
        "| point | proxy_fd | images/s |",
        "|---|---|---|",
        "| p1 | 12.35 | 12.3 |",
        "| p2 | 1.5 +- 0.25 | 12.3 |",
    ]


def test_markdown_table_layout():
    assert tables.markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]


def test_real_study_table_scales_kid_and_shows_t_for_fid_and_kid():
    per = lambda *v: {"fid": list(v), "kid": [x / 1000 for x in v], "images_per_sec": [1.0] * 2}  # noqa: E731
    res = {
        "none": {
            "row": dict(cfg_scale=1.0, nag_scale=0.0, nag_interval=[0, 1]),
            "per_seed": per(10, 12),
        },
        "none + unsharp": {
            "row": dict(cfg_scale=1.0, nag_scale=0.0, nag_interval=[0, 1], transform="unsharp",
                        strength=0.5),
            "per_seed": per(9, 10),
        },
    }  # fmt: skip
    summary = stats.summarize_rows(res, [("none + unsharp", "none")], ("fid", "kid"))
    text = tables.guidance_rows_table(res, summary, 2, 100, ("fid", "kid"))
    assert "| FID | KID x 1e3 |" in text
    assert "| none | 1 | 0 | 11.00 +- 1.00 | 11.00 +- 1.00 | 1.0 |" in text  # KID x 1000
    assert "0; unsharp 0.5" in text  # a control says what it is
    # differences -1 and -2: mean -1.5, SE 0.5, t -3.0 with 1 dof, for both FID and KID
    assert "| none + unsharp - none | -1.50 +- 0.50 (-3.0) | -1.50 +- 0.50 (-3.0) |" in text


def test_save_png_writes_grey_and_rgb(tmp_path):
    from PIL import Image

    from nag_jax.utils import save_png

    grey = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4, 1)
    save_png(str(tmp_path / "g.png"), grey)
    back = np.asarray(Image.open(tmp_path / "g.png"))
    assert back.shape == (3, 4) and (back == grey[..., 0]).all()
    rgb = np.stack([grey[..., 0]] * 3, -1)
    save_png(str(tmp_path / "c.png"), rgb)
    assert (np.asarray(Image.open(tmp_path / "c.png")) == rgb).all()
