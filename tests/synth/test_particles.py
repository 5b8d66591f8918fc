"""Synthetic particle micrographs: particles are where the truth says, and nowhere else."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from scipy.spatial.distance import pdist

from emlive.io.mrc import read_mrc
from emlive.synth.particles import (
    interaction_constant_rad_per_v_a,
    particle_micrograph,
    particle_positions,
    random_particle,
    write_particle_micrograph,
)

# 1024² at 2 Å/px: half the field of a 4K micrograph at 1 Å, sixteen times cheaper
SMALL = {"shape": (1024, 1024), "pixel_size_a": 2.0}


def test_interaction_constant_at_300_and_200_kv():
    # golden values (e.g. Kirkland's Advanced Computing in EM): 6.526e-4 and 7.288e-4 rad/(V·Å)
    assert interaction_constant_rad_per_v_a(300.0) == pytest.approx(6.526e-4, rel=2e-3)
    assert interaction_constant_rad_per_v_a(200.0) == pytest.approx(7.288e-4, rel=2e-3)


@pytest.mark.parametrize("diameter_a", [100.0, 250.0])
def test_random_particle_is_centred_and_inside_its_sphere(diameter_a):
    centres, sigmas, weights = random_particle(np.random.default_rng(0), diameter_a=diameter_a)
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose((weights[:, None] * centres).sum(axis=0), 0.0, atol=1e-9)
    # every blob's 1.5-sigma extent within the diameter (up to the centring shift)
    reach = np.linalg.norm(centres, axis=1) + 1.5 * sigmas
    assert reach.max() < 0.6 * diameter_a
    assert set(np.round(sigmas / diameter_a, 4)) == {0.05, 0.1}


@pytest.mark.parametrize("seed", range(3))
def test_positions_keep_their_distance_and_margin(seed):
    xy = particle_positions(np.random.default_rng(seed), (600, 800), min_separation_px=40.0, margin_px=30.0)
    assert pdist(xy).min() >= 40.0
    assert xy[:, 0].min() >= 30.0 and xy[:, 0].max() <= 800 - 1 - 30.0
    assert xy[:, 1].min() >= 30.0 and xy[:, 1].max() <= 600 - 1 - 30.0
    # random sequential adsorption jams at about 55 % of the area in discs of the separation
    coverage = len(xy) * np.pi * 20.0**2 / ((600 - 60) * (800 - 60))
    assert 0.45 < coverage < 0.6
    capped = particle_positions(
        np.random.default_rng(seed), (600, 800), min_separation_px=40.0, margin_px=30.0, n_max=7
    )
    assert len(capped) == 7


def test_normal_micrograph_particles_are_dark_where_the_truth_says():
    m = particle_micrograph(np.random.default_rng(1), diameter_a=150.0, kind="normal", **SMALL)
    assert m.image.dtype == np.float32 and m.image.shape == (1024, 1024)
    # mean counts: dose × pixel area (the particles are weak phase objects)
    assert m.image.mean() == pytest.approx(40.0 * 2.0**2, rel=0.01)
    # 20 % of the area in particle discs, at least 1.05 diameters apart, a diameter from the edges
    n_expected = 0.2 * (1024 - 2 * 75) ** 2 / (np.pi * 37.5**2)
    assert m.n_particles == pytest.approx(n_expected, abs=1)
    assert pdist(m.positions_px).min() >= 1.05 * m.diameter_px
    assert m.positions_px.min() >= m.diameter_px and m.positions_px.max() <= 1023 - m.diameter_px
    # phase-flip-free check: at the defocus drawn (>= 0.8 µm) a particle is darker at its
    # centre than the ice half a diameter away, on the low-passed image
    low = scipy.ndimage.gaussian_filter(m.image.astype(np.float64), sigma=0.15 * m.diameter_px)
    x, y = m.positions_px.round().astype(int).T
    at = low[y, x]
    shift = int(round(0.55 * m.diameter_px))
    beside = np.mean([low[y, np.clip(x + shift, 0, 1023)], low[y, np.clip(x - shift, 0, 1023)]], axis=0)
    assert np.mean(at < beside) > 0.95
    # x is the column, y the row: transposing the truth puts it on ice
    assert np.mean(low[x, y] < np.mean(low)) < 0.8
    assert not m.carbon_mask.any() and not m.contamination_mask.any() and len(m.rejected_positions_px) == 0


def test_crowded_is_denser_and_empty_has_none():
    crowded = particle_micrograph(np.random.default_rng(2), diameter_a=120.0, kind="crowded", **SMALL)
    normal = particle_micrograph(np.random.default_rng(2), diameter_a=120.0, kind="normal", **SMALL)
    assert crowded.n_particles > 2.2 * normal.n_particles
    empty = particle_micrograph(np.random.default_rng(2), diameter_a=120.0, kind="empty", **SMALL)
    assert empty.n_particles == 0
    # pure shot noise: Poisson variance equals the mean
    assert empty.image.var() == pytest.approx(empty.image.mean(), rel=0.02)


def test_carbon_covers_the_fraction_asked_and_truth_avoids_it():
    m = particle_micrograph(np.random.default_rng(3), diameter_a=150.0, kind="carbon", carbon_fraction=0.4, **SMALL)
    assert m.carbon_mask.mean() == pytest.approx(0.4, abs=0.02)
    # one film: a single connected region beyond a smooth (circular) edge
    assert scipy.ndimage.label(m.carbon_mask)[1] == 1
    film_distance = scipy.ndimage.distance_transform_edt(~m.carbon_mask)
    x, y = m.positions_px.round().astype(int).T
    assert film_distance[y, x].min() >= 0.5 * m.diameter_px - 1
    # some particles lie on the film, others across its edge: neither is ground truth
    xr, yr = m.rejected_positions_px.round().astype(int).T
    assert m.carbon_mask[yr, xr].any()
    assert (film_distance[yr, xr] < 0.5 * m.diameter_px).all()
    # the film is thicker: fewer counts
    assert m.image[m.carbon_mask].mean() < 0.9 * m.image[~m.carbon_mask].mean()


def test_contamination_and_gradient():
    m = particle_micrograph(np.random.default_rng(4), diameter_a=150.0, kind="contamination", **SMALL)
    assert m.contamination_mask.any()
    assert m.image[m.contamination_mask].mean() < 0.4 * m.image[~m.contamination_mask].mean()
    distance = scipy.ndimage.distance_transform_edt(~m.contamination_mask)
    x, y = m.positions_px.round().astype(int).T
    assert distance[y, x].min() >= 0.4 * m.diameter_px
    g = particle_micrograph(np.random.default_rng(5), diameter_a=150.0, kind="gradient", **SMALL)
    coarse = scipy.ndimage.uniform_filter(g.image, 128)[64:-64:64, 64:-64:64]
    assert coarse.max() / coarse.min() > 1.2  # an ice-thickness ramp


def test_reproducible_and_written_with_pixel_size(tmp_path):
    a = particle_micrograph(np.random.default_rng(9), diameter_a=100.0, shape=(256, 320), pixel_size_a=2.5)
    b = particle_micrograph(np.random.default_rng(9), diameter_a=100.0, shape=(256, 320), pixel_size_a=2.5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.positions_px, b.positions_px)
    assert 8000 <= 0.5 * (a.defocus_u_a + a.defocus_v_a) <= 30000 and a.defocus_u_a >= a.defocus_v_a
    path = write_particle_micrograph(tmp_path / "sub" / "mic.mrc", a)
    data, pixel_size = read_mrc(path)
    assert pixel_size == 2.5
    np.testing.assert_array_equal(data, a.image)
    assert a.optics().pixel_size_a == 2.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        particle_micrograph(np.random.default_rng(0), kind="ice", shape=(64, 64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        particle_micrograph(np.random.default_rng(0), diameter_a=0.0, shape=(64, 64))
