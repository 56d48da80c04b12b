"""Volumes are read in RAS axis order whatever order their file stores (nibabel's
as_closest_canonical, MONAI's Orientation("RAS")): the same anatomy reaches a network in the same
axis order from a NIfTI stored x-first or slice-first, and results go back to the file's order."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtrain.data.volumes import nifti_spacing, read_volume, spacing_to_stored, to_stored

# x, y, z voxels of 0.8 x 0.9 x 2.5 mm, RAS; and the same grid stored z-first with x flipped
# (axes S, A, L): a slice-first export of the same scan.
RAS = np.diag([0.8, 0.9, 2.5, 1.0])
RAS[:3, 3] = [-10.0, 20.0, 5.0]


def stored_slice_first(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`array` (x, y, z in RAS) stored as (z, y, x) with x reversed, and the affine that says so."""
    stored = np.ascontiguousarray(np.transpose(array, (2, 1, 0))[:, :, ::-1])
    nx = array.shape[0]
    affine = np.zeros((4, 4))
    affine[0, 2] = -0.8  # stored axis 2 runs to the Left
    affine[1, 1] = 0.9
    affine[2, 0] = 2.5
    affine[:3, 3] = RAS[:3, 3] + [0.8 * (nx - 1), 0, 0]  # the first stored voxel is the last x
    affine[3, 3] = 1
    return stored, affine


@pytest.fixture
def anatomy() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)


def test_a_volume_stored_slice_first_reads_as_the_ras_file_does(tmp_path: Path, anatomy):
    nib.save(nib.Nifti1Image(anatomy, RAS), str(tmp_path / "ras.nii.gz"))
    stored, affine = stored_slice_first(anatomy)
    nib.save(nib.Nifti1Image(stored, affine), str(tmp_path / "sal.nii.gz"))
    assert nib.aff2axcodes(affine) == ("S", "A", "L")

    plain, turned = read_volume(tmp_path / "ras.nii.gz"), read_volume(tmp_path / "sal.nii.gz")
    assert plain.stored_affine is None  # already RAS: nothing reordered
    np.testing.assert_array_equal(turned.array, anatomy)  # voxel for voxel the RAS file's
    np.testing.assert_allclose(turned.affine, RAS)  # the same world coordinates
    assert turned.spacing == pytest.approx((0.8, 0.9, 2.5)) == plain.spacing
    assert turned.orientation == ("R", "A", "S")
    assert nifti_spacing(tmp_path / "sal.nii.gz") == pytest.approx((0.8, 0.9, 2.5))
    # nibabel's own canonical form agrees
    canonical = nib.as_closest_canonical(nib.load(str(tmp_path / "sal.nii.gz")))
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), turned.array)
    np.testing.assert_allclose(canonical.affine, turned.affine)
    # Back in the file's order: a label volume written with the file's affine lies on its voxels.
    np.testing.assert_array_equal(to_stored(turned.array, turned.affine, affine), stored)
    assert spacing_to_stored(turned.spacing, turned.affine, affine) == pytest.approx(
        [2.5, 0.9, 0.8]
    )


def test_a_dicom_series_reads_in_the_order_of_the_same_nifti(tmp_path: Path):
    """A DICOM series (slices first by position) and a NIfTI of it give one array."""
    from tests.data.test_volumes import write_series

    write_series(tmp_path / "series", [0.0, 3.0, 6.0], rows=4, cols=5)
    volume = read_volume(tmp_path / "series")
    assert volume.orientation == ("R", "A", "S") and volume.stored_affine is not None
    image = nib.Nifti1Image(
        to_stored(volume.array, volume.affine, volume.stored_affine), volume.stored_affine
    )
    nib.save(image, str(tmp_path / "same.nii.gz"))
    again = read_volume(tmp_path / "same.nii.gz")
    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_allclose(again.affine, volume.affine)


def test_a_label_stored_in_other_axes_than_its_image_is_refused(tmp_path: Path):
    """A label saved without an affine (nibabel's default: LAS) beside a RAS image: each read in
    RAS order by its own affine, they would lie mirrored; refused, naming both, for both volume
    datasets (and so by the data check)."""
    from medtrain.data.nifti_volumes import NiftiVolumes
    from medtrain.data.volume_slices import VolumeSlices
    from medtrain.errors import DataError
    from tests.data.test_volumes import make_cases

    make_cases(tmp_path, count=4, spacing=(1.0, 1.0, 1.0))
    labels = np.asarray(nib.load(str(tmp_path / "labels" / "case_01.nii.gz")).dataobj)
    nib.save(nib.Nifti1Image(labels, None), str(tmp_path / "labels" / "case_01.nii.gz"))
    said = r"case_01.nii.gz: its axes are stored as LAS, the image's as RAS .* save the labels"
    with pytest.raises(DataError, match=said):
        for split in ("train", "val", "test"):
            data = NiftiVolumes(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)
            for k in range(len(data.cases)):
                data.voxel_spacing(k)
    with pytest.raises(DataError, match=said):
        for split in ("train", "val", "test"):
            VolumeSlices(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)


def test_a_label_without_affine_beside_a_slice_first_image_is_named_so_in_the_data_check(
    tmp_path: Path,
):
    """Its shape would differ once each is turned to RAS; the check names the axes first."""
    from medtrain.engine.config import compose_config
    from medtrain.engine.data_check import check_config
    from tests.data.test_volumes import make_cases

    make_cases(tmp_path / "data", count=4, spacing=(1.0, 1.0, 1.0))
    for n in range(4):
        for kind in ("images", "labels"):
            path = tmp_path / "data" / kind / f"case_{n:02d}.nii.gz"
            array = np.asarray(nib.load(str(path)).dataobj)
            stored, affine = stored_slice_first(array)
            if kind == "labels" and n == 1:
                affine = None  # saved without one: nibabel's LAS default
            nib.save(nib.Nifti1Image(stored, affine), str(path))
    cfg = compose_config(
        ["dataset=nifti_volumes", f"dataset.path={tmp_path / 'data'}", "dataset.num_classes=3"]
        + ["dataset.val_size=1", "dataset.test_size=1", "augmentation=mri_volume"]
        + ["task=segmentation", "model=unet", "loss=dice_ce"]
    )
    errors = check_config(cfg, workers=1, progress=False)["errors"]
    assert (
        len(errors) == 1
        and "case_01.nii.gz: its axes are stored as LAS, the image's as SAL" in errors[0]
    )


def test_objects_of_a_label_volume_are_counted_by_hand():
    """Two boxes of class 1 apart, one of class 2; two cubes touching along an edge only are one
    object with 18 neighbours (task.connectivity 2), two with 6 (1)."""
    from medtrain.analysis.volume_results import structure_objects

    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[6:9, 6:9, 6:9] = 1
    mask[1:3, 6:8, 1:3] = 2
    names = ["background", "lesion", "cyst"]
    assert structure_objects(mask, names, 1) == {"lesion": 2, "cyst": 1}
    edge = np.zeros((6, 6, 6), np.uint8)
    edge[1:3, 1:3, 1:3] = 1
    edge[3:5, 3:5, 1:3] = 1  # shares an edge (along the last axis) with the first cube
    assert structure_objects(edge, names[:2], 1) == {"lesion": 2}
    assert structure_objects(edge, names[:2], 2) == {"lesion": 1}
