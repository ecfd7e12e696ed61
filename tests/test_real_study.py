"""The real-image study's protocol (nag_jax.evaluation.real_study): the validation choice, the
report rows, the verdict rule; with a fake sampler and scorer whose numbers are known."""

import ml_collections
import numpy as np
import pytest

from nag_jax.evaluation import controls, real_study
from nag_jax.evaluation.guidance_rows import Row
from nag_jax.reporting import stats


def _diff(mean, se, n=5):
    return dict(mean=mean, se=se, t=mean / se, dof=n - 1)


def _summary(nag_fid, nag_kid, unsharp=(-0.5, -0.1), noise=(0.3, 0.05), se=(0.4, 0.02)):
    d = lambda f, k: {"fid": _diff(f, se[0]), "kid": _diff(k, se[1])}  # noqa: E731
    return {
        "differences": {
            "NAG - none": d(*nag_fid_kid(nag_fid, nag_kid)),
            "none + unsharp - none": d(*unsharp),
            "none + noise - none": d(*noise),
            "NAG - CFG": d(0.2, 0.01),
        }
    }


def nag_fid_kid(f, k):
    return f, k


def test_verdict_helps_only_beyond_3se_and_both_controls():
    # gains 2.0 (5 SE) and 0.1 (5 SE); the best control gains 0.5 and 0.1 -> KID ties: not >
    v = real_study.verdict(_summary(-2.0, -0.1))
    assert v["NAG - none"]["status"] == "null"
    assert any("control" in r for r in v["NAG - none"]["reasons"])
    v = real_study.verdict(_summary(-2.0, -0.15))
    assert v["NAG - none"]["status"] == "helps"
    g = v["NAG - none"]["gains"]["fid"]
    assert g["gain"] == pytest.approx(2.0) and g["control_gain"] == pytest.approx(0.5)
    assert g["dof"] == 4


def test_verdict_null_below_3se_and_hurts_beyond():
    v = real_study.verdict(_summary(-1.1, -0.15))  # FID gain 1.1 < 3 x 0.4
    assert v["NAG - none"]["status"] == "null"
    v = real_study.verdict(_summary(+1.3, +0.07))  # worse by > 3 SE in both
    assert v["NAG - none"]["status"] == "hurts"
    assert not v["NAG - none"]["holds"]


def test_verdict_nag_vs_cfg_equality_within_3se():
    v = real_study.verdict(_summary(-2.0, -0.15))
    assert v["NAG - CFG"]["equal_within_3se"] == {"fid": True, "kid": True}
    lines = real_study.verdict_lines(v)
    assert lines[0].startswith("Rule (stated before")
    assert any("**NAG - none: helps**" in line for line in lines)


def test_report_rows_pair_cfg_nag_at_the_cfg_rows_scale():
    choice = dict(
        cfg_scale=2.0,
        nag_scale=1.0,
        nag_interval=[0.0, 0.5],
        cfg_nag=[2.0, 0.5],
        cls_nag_scale=0.5,
        cls_nag_interval=[0.0, 0.6],
        unsharp_amount=0.7,
        noise_sigma=0.05,
    )
    rows = {r.name: r for r in real_study.report_rows(choice)}
    assert list(rows) == [
        "none", "CFG", "NAG", "CFG+NAG", "cls-NAG", "none + unsharp", "none + noise", "none + blur"
    ]  # fmt: skip
    assert rows["CFG+NAG"].cfg_scale == rows["CFG"].cfg_scale == 2.0
    assert rows["NAG"].nag_interval == (0.0, 0.5) and rows["cls-NAG"].nag_mode == "classifier"
    assert rows["none + unsharp"].sampling_key == rows["none"].sampling_key
    assert (rows["none + noise"].transform, rows["none + noise"].strength) == ("noise", 0.05)


class _FakeSampler:
    """Images of a row: a smooth ramp plus a checkerboard whose amplitude grows with w_nag (NAG
    adds high-frequency energy the controls must match); pixels (0, 0..2) carry s, w and the
    interval's upper end / 10 for the fake scorer."""

    def __call__(self, row: Row, params, seed, n):
        x = np.linspace(-0.5, 0.5, 8)[None, :] * np.ones((8, 1))
        checker = np.where((np.add.outer(np.arange(8), np.arange(8)) % 2) == 0, 1.0, -1.0)
        texture = np.random.default_rng(0).normal(0, 0.05, (8, 8))  # something to sharpen
        img = 0.5 * x + texture + 0.05 * row.nag_scale * checker
        img[0, :3] = row.cfg_scale / 10, row.nag_scale / 10, row.nag_interval[1] / 10
        images = np.broadcast_to(img[None, :, :, None], (n, 8, 8, 1)).astype(np.float32)
        return images, np.zeros(n, np.int32), 100.0


class _FakeScorer:
    """FID = (s - 2)^2 + (w - 1)^2, + 0.5 off the whole NAG interval; KID 0."""

    metrics = ("fid", "kid")

    def __init__(self):
        self.calls = 0

    def __call__(self, images, labels):
        self.calls += 1
        s, w, hi = (float(v) * 10 for v in images[0, 0, :3, 0])
        return {"fid": (s - 2.0) ** 2 + (w - 1.0) ** 2 + 0.5 * (w > 0 and hi < 1), "kid": 0.0}


def test_validate_picks_the_lowest_fid_among_scales_that_switch_guidance_on():
    st = ml_collections.ConfigDict(
        dict(
            select="fid",
            cfg_scales=(1.0, 1.5, 2.0, 3.0),
            nag_scales=(0.0, 0.5, 1.0, 2.0),
            nag_intervals=((0.0, 1.0), (0.0, 0.5)),
            cls_nag_scales=(0.5, 1.0),
            cls_nag_interval=(0.0, 0.6),
        )
    )
    scorer = _FakeScorer()
    out = real_study.validate(_FakeSampler(), None, [100, 101], 4, scorer, st)
    c = out["choice"]
    assert c["cfg_scale"] == pytest.approx(2.0) and c["nag_scale"] == pytest.approx(1.0)
    assert c["nag_interval"] == [0.0, 1.0]
    assert c["cfg_nag"] == [2.0, 1.0]  # CFG+NAG at the CFG row's s
    # every distinct row is scored once per seed ("none" is shared by both curves)
    distinct = 1 + 3 + 3 + 1 + 2 + 2  # none, cfg, nag, the other interval, joint, cls
    assert scorer.calls == 2 * distinct
    # the controls reach NAG's high-frequency energy on the unguided images
    none = _FakeSampler()(Row("none"), None, 100, 4)[0]
    nag = _FakeSampler()(Row("n", nag_scale=1.0), None, 100, 4)[0]
    target = controls.laplacian_energy(nag)
    assert c["hf_energy"]["nag"] == pytest.approx(target, rel=1e-6)
    sharpened = controls.unsharp_mask(none, c["unsharp_amount"])
    assert controls.laplacian_energy(sharpened) == pytest.approx(target, rel=1e-2)
    assert c["blur_amount"] == 0.0  # NAG added energy here: nothing to blur
    m, se = stats.mean_se(out["per_seed"]["none"]["per_seed"]["fid"])
    assert m == pytest.approx((1 - 2) ** 2 + (0 - 1) ** 2, abs=1e-3) and se == 0.0


class _SmoothingSampler(_FakeSampler):
    """As _FakeSampler, but NAG halves the texture: it LOWERS the high-frequency energy."""

    def __call__(self, row: Row, params, seed, n):
        images, labels, ips = super().__call__(Row("none"), params, seed, n)
        texture = np.random.default_rng(0).normal(0, 0.05, (8, 8))
        images = images - 0.5 * min(row.nag_scale, 1.0) * texture[None, :, :, None]
        return images.astype(np.float32), labels, ips


def test_controls_blur_where_nag_lowers_the_high_frequency_energy():
    s = _SmoothingSampler()
    none, nag = Row("none"), Row("nag", nag_scale=1.0)
    strengths, energies = real_study.match_controls(s, None, none, nag, [100], 4)
    assert energies["nag"] < energies["none"]
    assert strengths["unsharp"] == 0.0 and strengths["noise"] == 0.0
    assert 0 < strengths["blur"] <= 1
    blurred = controls.blur(s(none, None, 100, 4)[0], strengths["blur"])
    assert controls.laplacian_energy(blurred) == pytest.approx(energies["nag"], rel=1e-3)
