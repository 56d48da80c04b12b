"""Volumes: NIfTI and DICOM series reading, the decode cache, slice datasets split by volume (and by
patient with dataset.group_column), and slice predictions reassembled into volumes scored in 3D with
volumes in mL."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medtrain.data.base import SPLITS
from medtrain.data.nifti_volumes import NiftiVolumes
from medtrain.data.volume_slices import VolumeSlices
from medtrain.data.volumes import VolumeCache, read_volume, stack_slices
from medtrain.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA, read_metrics, train_in_process


def save_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_cases(root: Path, count: int = 10, shape=(12, 20, 16), spacing=(1.0, 0.8, 1.5)) -> None:
    """`count` volumes: a bright box (class 1) and a dimmer ball (class 2) on noise."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for n in range(count):
        labels = np.zeros(shape, np.uint8)
        x0 = 2 + n % 3
        labels[x0 : x0 + 5, 4:12, 3:9] = 1
        zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
        labels[(zz - 6) ** 2 + (yy - 14) ** 2 + (xx - 11) ** 2 <= 9] = 2
        image = rng.normal(0, 0.3, shape).astype(np.float32) + labels * 1.5
        save_nifti(root / "images" / f"case_{n:02d}.nii.gz", image, spacing)
        save_nifti(root / "labels" / f"case_{n:02d}.nii.gz", labels, spacing)


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_nifti_keeps_spacing_affine_and_orientation(tmp_path):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_nifti(tmp_path / "v.nii.gz", array, (0.5, 2.0, 3.0))
    volume = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing == (0.5, 2.0, 3.0)
    assert volume.orientation == ("R", "A", "S")
    assert volume.affine[:3, 3].tolist() == [10.0, -20.0, 5.0]
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="bad.nii.gz: cannot read NIfTI"):
        read_volume(tmp_path / "bad.nii.gz")
    with pytest.raises(DataError, match="nothing.nii: no such file"):
        read_volume(tmp_path / "nothing.nii")


def test_a_picture_given_as_a_volume_is_named_by_its_format(tmp_path):
    """A PNG, JPEG or TIFF given to a run on volumes was read as DICOM and failed as one
    ("missing DICOM File Meta Information header ... Use force=True")."""
    from PIL import Image

    picture = Image.fromarray(np.eye(8, dtype=np.uint8) * 255)
    for name, kind in (("s.png", "PNG"), ("s.jpg", "JPEG"), ("s.tif", "TIFF"), ("s.dcm", "PNG")):
        picture.save(tmp_path / name, format=kind)
        with pytest.raises(DataError) as err:
            read_volume(tmp_path / name)
        assert str(err.value) == (
            f"{tmp_path / name}: a {kind} image, not a volume; give a NIfTI file (.nii, "
            ".nii.gz), a DICOM series folder or a multi-frame DICOM file"
        )
    (tmp_path / "odd.dcm").write_bytes(b"\x00" * 200)  # nothing known: read as DICOM, which says so
    with pytest.raises(DataError, match="odd.dcm: cannot read DICOM"):
        read_volume(tmp_path / "odd.dcm")


def write_series(folder: Path, positions, series_uid="1.2.3", rows=4, cols=3) -> None:
    """DICOM slices whose file names do NOT follow their positions (and whose instance numbers
    are reversed), each filled with its z position so the order can be checked."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"s{k}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID = "MR", series_uid
        ds.InstanceNumber = len(positions) - k
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.6]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -100
        ds.PixelData = np.full((rows, cols), int(z * 10) + 1000, np.uint16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / f"file_{k:02d}.dcm").write_bytes(buffer.getvalue())


def test_dicom_series_is_ordered_by_position_not_name(tmp_path):
    positions = [6.0, 0.0, 9.0, 3.0, 12.0]
    write_series(tmp_path / "series", positions)
    volume = read_volume(tmp_path / "series")
    # Stored slices (S) x rows (P) x columns (L); read in RAS order: columns flipped to R, rows
    # flipped to A, slices last.
    assert volume.array.shape == (3, 4, 5)
    assert volume.spacing == (0.6, 0.5, 3.0)
    # Each slice holds 10 z + 1000 - 100 (the rescale intercept): ordered by z. The first row and
    # column of every slice are the last along R and A.
    np.testing.assert_array_equal(volume.array[2, 3, :], [900, 930, 960, 990, 1020])
    write_series(tmp_path / "two", [0.0, 1.0])
    write_series(tmp_path / "two", [2.0], series_uid="9.9.9")
    with pytest.raises(DataError, match="holds 2 series"):
        read_volume(tmp_path / "two")
    write_series(tmp_path / "same", [1.0, 1.0])
    with pytest.raises(DataError, match="lie at the same position"):
        read_volume(tmp_path / "same")
    write_series(tmp_path / "gap", [0.0, 3.0, 9.0, 12.0])  # the slice at 6 mm is missing
    with pytest.raises(DataError, match="a gap of 6 mm .* where the slices are 3 mm apart"):
        read_volume(tmp_path / "gap")


def test_dicom_series_affine_is_ras_so_written_masks_lie_on_the_image(tmp_path):
    """DICOM positions are LPS+; the volume's affine (what a predicted NIfTI mask is written
    with) is RAS+, as nibabel and every NIfTI viewer read it."""
    import nibabel as nib

    from medtrain.analysis.volume_results import write_nifti

    write_series(tmp_path / "series", [0.0, 3.0, 6.0])  # axial: rows run posterior, columns left
    volume = read_volume(tmp_path / "series")
    # As stored: slices up, rows to P, columns to L (LPS +x); read in RAS order.
    assert nib.aff2axcodes(volume.stored_affine) == ("S", "P", "L")
    assert volume.orientation == ("R", "A", "S")
    corner = volume.stored_affine @ [0, 1, 1, 1]  # stored voxel (slice 0, row 1, column 1)
    # in LPS that voxel is at (+0.6, +0.5, 0): in RAS, (-0.6, -0.5, 0)
    np.testing.assert_allclose(corner[:3], [-0.6, -0.5, 0.0])
    # the same voxel in the RAS array: column 1 of 3 flipped, row 1 of 4 flipped, slice 0
    np.testing.assert_allclose((volume.affine @ [1, 2, 0, 1])[:3], [-0.6, -0.5, 0.0])
    path = write_nifti(tmp_path / "mask.nii.gz", np.zeros((3, 4, 3), np.uint8), volume.affine)
    written = nib.load(str(path))
    assert nib.aff2axcodes(written.affine) == ("R", "A", "S")
    # Both the qform and the sform state it, as scanner coordinates (a reader of either agrees).
    for stated, code in (
        written.header.get_qform(coded=True),
        written.header.get_sform(coded=True),
    ):
        assert int(code) == 1
        np.testing.assert_allclose(stated, volume.affine, atol=1e-5)


def test_volumes_with_nan_voxels_are_refused_naming_the_file(tmp_path):
    nib = pytest.importorskip("nibabel")
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(DataError, match=r"bad.nii.gz: 1 voxel\(s\) are NaN or infinite"):
        read_volume(tmp_path / "bad.nii.gz")
    # An upload (the service) is told the same, not that preprocessing overflowed.
    from medtrain.data.volumes import decode_nifti

    data = (tmp_path / "bad.nii.gz").read_bytes()
    with pytest.raises(DataError, match=r"upload.nii.gz: 1 voxel\(s\) are NaN or infinite"):
        decode_nifti(data, "upload.nii.gz", 10**6)
    # Complex voxels (MR phase data) hold no one intensity: refused, not cast to their real part.
    nib.save(nib.Nifti1Image(array.astype(np.complex64) * 1j, np.eye(4)), str(tmp_path / "c.nii"))
    with pytest.raises(DataError, match="c.nii: NIfTI voxels of type complex64; give real-valued"):
        read_volume(tmp_path / "c.nii")


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "dicom").is_dir(), reason="needs ../shared/data/dicom")
def test_shared_series_is_a_17_slice_volume_with_2mm_spacing():
    volume = read_volume(SHARED_DATA / "dicom" / "series_t1_brain_17")
    assert volume.array.shape == (88, 128, 17)  # stored 17 x 128 x 88 (S, A, R): read as RAS
    assert volume.spacing == (2.0, 2.0, 2.0)


def test_cache_decodes_once_and_disk_cache_survives(tmp_path):
    calls = []

    def read(path):
        calls.append(path)
        return np.arange(6.0).reshape(2, 3)

    (tmp_path / "v.nii").write_bytes(b"x")
    memory = VolumeCache("memory")
    assert memory.array(tmp_path / "v.nii", read) is memory.array(tmp_path / "v.nii", read)
    assert len(calls) == 1
    disk = VolumeCache("disk", tmp_path / "cache")
    disk.array(tmp_path / "v.nii", read)
    again = VolumeCache("disk", tmp_path / "cache").array(tmp_path / "v.nii", read)  # a new run
    assert len(calls) == 2  # read once per cache: the second disk cache found the file
    np.testing.assert_array_equal(again, np.arange(6.0).reshape(2, 3))
    (tmp_path / "v.nii").write_bytes(b"edited")  # a changed file is decoded again
    VolumeCache("disk", tmp_path / "cache").array(tmp_path / "v.nii", read)
    assert len(calls) == 3
    # The same file read another way (other classes, another normalization) is its own entry.
    other = VolumeCache("disk", tmp_path / "cache").array(
        tmp_path / "v.nii", lambda p: np.zeros((2, 3)), "labels:2"
    )
    assert not other.any()
    found = VolumeCache("disk", tmp_path / "cache").array(tmp_path / "v.nii", read)
    assert found.any() and len(calls) == 3


def test_slices_split_by_volume_and_skip_empty_training_slices(tmp_path):
    make_cases(tmp_path, count=10)
    kwargs = {"num_classes": 3, "val_size": 2, "test_size": 2, "seed": 1, "axis": 0}
    splits = {s: VolumeSlices(str(tmp_path), s, **kwargs) for s in ("train", "val", "test")}
    cases = {s: set(d.cases) for s, d in splits.items()}
    assert len(cases["train"]) == 6 and len(cases["val"]) == 2 and len(cases["test"]) == 2
    assert not (cases["train"] & cases["val"]) and not (cases["train"] & cases["test"])
    assert len(splits["val"]) == 2 * 12  # every slice of every volume
    train = splits["train"]
    assert all(train.read_mask(i).any() for i in range(len(train)))  # empty slices skipped
    sample = splits["test"][3]
    assert sample["id"] == f"{splits['test'].cases[0]}#003"
    assert sample["image"].shape == (1, 20, 16) and sample["mask"].shape == (20, 16)
    assert sample["spacing"].tolist() == pytest.approx([0.8, 1.5])  # the slice plane's axes
    # The same split again from a run's splits.json (slice ids name their cases).
    saved = tmp_path / "splits.json"
    saved.write_text(json.dumps({s: list(d.ids) for s, d in splits.items()}))
    again = VolumeSlices(str(tmp_path), "test", num_classes=3, split_file=str(saved))
    assert again.cases == splits["test"].cases


def test_folds_of_slices_hold_whole_volumes(tmp_path):
    """Cross-validation of slices assigns whole volumes to folds: a fold's validation set holds
    every slice of its volumes (also of volumes from the data's train split, whose empty slices
    training skipped), its training set only the foreground slices of the other volumes; each
    pooled volume is validated in exactly one fold and the test volumes in none."""
    from medtrain.data.folds import assign_folds, fold_datasets, fold_units
    from medtrain.io import save_json

    make_cases(tmp_path, count=10)
    kwargs = {"num_classes": 3, "val_size": 2, "test_size": 2, "seed": 1, "axis": 0}
    train, val, test = (VolumeSlices(str(tmp_path), s, **kwargs) for s in ("train", "val", "test"))
    assert fold_units(train) == train.cases and len(train.ids) < 12 * 6
    pool = fold_units(train) + fold_units(val)
    assignment = assign_folds(pool, 4, seed=0)
    folds_file = tmp_path / "folds.json"
    save_json(folds_file, {"folds": 4, "seed": 0, "ids": pool, "fold": assignment.tolist()})
    validated = []
    for fold in range(4):
        fold_train, fold_val = fold_datasets(train, val, folds_file, fold, None, None)
        held_out = [c for c, f in zip(pool, assignment, strict=True) if f == fold]
        assert fold_val.cases == held_out
        assert fold_val.ids == [f"{c}#{k:03d}" for c in held_out for k in range(12)]
        assert not set(fold_train.cases) & set(held_out)
        assert sorted(fold_train.cases) == sorted(set(pool) - set(held_out))
        assert all(fold_train.read_mask(i).any() for i in range(len(fold_train)))
        for index in range(len(fold_val)):
            case, k = fold_val.index[index]
            labels = np.asarray(nib.load(str(tmp_path / "labels" / f"{case}.nii.gz")).dataobj)
            np.testing.assert_array_equal(fold_val.read_mask(index), labels[k])
        sample = fold_val[0]
        assert sample["volume"] == held_out[0] and sample["num_slices"] == 12
        validated += fold_val.cases
    assert sorted(validated) == sorted(pool)
    assert not set(validated) & set(test.cases)
    assert train.cases == fold_units(train) and len(train.geometry) == 6  # the splits unchanged


# Ten cases of six patients, four with two scans: what `write_volume_manifest` lists.
PATIENTS = ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3", "p4", "p5"]
PATIENT_OF = {f"case_{n:02d}": patient for n, patient in enumerate(PATIENTS)}


def test_a_nifti_label_of_a_dicom_series_is_checked_against_the_series(tmp_path):
    """A DICOM series' geometry comes from its headers: a NIfTI label saved without the series'
    affine (nibabel's LAS default), with another voxel size or shifted is refused, as against a
    NIfTI image; one saved with the series' affine lies on it."""
    import nibabel as nib

    from medtrain.data.volumes import check_label_geometry

    series = tmp_path / "series"
    write_series(series, [0.0, 3.0, 6.0, 9.0, 12.0])
    stored = read_volume(series, ras=False)
    labels = np.zeros(stored.array.shape, np.uint8)
    labels[1:3, 1:3, 1:2] = 1

    def label(name: str, affine) -> tuple[Path, object]:
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), str(path))
        return path, read_volume(path)

    check_label_geometry(series, *reversed(label("same", stored.affine)))
    path, volume = label("no_affine", None)
    with pytest.raises(
        DataError, match=r"no_affine.nii.gz: its axes are stored as LAS, the image's as SPL"
    ):
        check_label_geometry(series, volume, path)
    wider = stored.affine.copy()
    wider[:3, :3] *= 2.0
    path, volume = label("wider", wider)
    with pytest.raises(
        DataError, match=r"wider.nii.gz: voxels of .* mm, the image's are 0.6 x 0.5 x 3 mm"
    ):
        check_label_geometry(series, volume, path)
    shifted = stored.affine.copy()
    shifted[2, 3] += 3.0
    path, volume = label("shifted", shifted)
    with pytest.raises(DataError, match=r"shifted.nii.gz: its first voxel lies \(\+0 \+0 \+3\) mm"):
        check_label_geometry(series, volume, path)


def write_volume_manifest(root: Path, splits: list[str] | None = None) -> Path:
    """`make_cases` listed in `root/cases.csv` with each case's patient (`PATIENTS`) and, when
    given, its split."""
    make_cases(root, count=len(PATIENTS))
    lines = ["image,mask,patient" + (",split" if splits else "")]
    for n, patient in enumerate(PATIENTS):
        cells = [f"images/case_{n:02d}.nii.gz", f"labels/case_{n:02d}.nii.gz", patient]
        lines.append(",".join(cells + ([splits[n]] if splits else [])))
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def test_volume_groups_share_a_split_drawn_by_patient(tmp_path):
    """dataset.group_column: the seeded split draws patients (val_size and test_size count
    patients), keeps each patient's volumes in one split, is the same for a seed and for both
    volume datasets, and `groups` names each case's patient. Without it the split is by volume,
    as it always was."""
    csv_path = write_volume_manifest(tmp_path)
    kwargs = {"num_classes": 3, "val_size": 1, "test_size": 1, "group_column": "patient"}
    for seed in range(3):
        for kind in (VolumeSlices, NiftiVolumes):
            splits = {s: kind(str(csv_path), s, seed=seed, **kwargs) for s in SPLITS}
            patients = {s: {PATIENT_OF[c] for c in d.cases} for s, d in splits.items()}
            assert [len(patients[s]) for s in SPLITS] == [4, 1, 1]
            assert set().union(*patients.values()) == set(PATIENTS)  # so no patient in two
            for s, data in splits.items():
                assert data.groups == [PATIENT_OF[c] for c in data.cases]
                assert data.cases == sorted(c for c, p in PATIENT_OF.items() if p in patients[s])
            if kind is VolumeSlices:
                slices_split = {s: d.cases for s, d in splits.items()}
                assert len(splits["val"].ids) == 12 * len(splits["val"].cases)  # slices of cases
            else:
                assert {s: d.cases for s, d in splits.items()} == slices_split
                assert {s: d.ids for s, d in splits.items()} == slices_split
    again = VolumeSlices(str(csv_path), "test", seed=2, **kwargs)
    assert again.cases == slices_split["test"]  # the last seed's split, drawn again
    val = NiftiVolumes(str(csv_path), "val", **kwargs)  # seed 0 holds out patient p2's 2 volumes
    assert val.cases == ["case_04", "case_05"] and val.groups == ["p2", "p2"]
    # Without group_column: the volumes are split as before (the folder layout's split, too).
    plain = {"num_classes": 3, "val_size": 2, "test_size": 2, "seed": 1}
    for path in (csv_path, tmp_path):
        splits = {s: VolumeSlices(str(path), s, **plain) for s in SPLITS}
        assert {s: d.cases for s, d in splits.items()} == {
            "train": ["case_01", "case_02", "case_03", "case_05", "case_06", "case_09"],
            "val": ["case_00", "case_07"],
            "test": ["case_04", "case_08"],
        }
        assert all(d.groups is None for d in splits.values())


@pytest.mark.parametrize("dataset", ["volume_slices", "nifti_volumes"])
def test_cv_folds_of_volumes_keep_a_patient_in_one_fold(tmp_path, dataset):
    """`medtrain cv` with dataset.group_column draws folds of patients (folds.json `grouped`),
    the test split's patients in none; a fold's datasets keep each volume's patient."""
    from medtrain.data.folds import fold_datasets
    from medtrain.engine.build import build_datasets
    from medtrain.experiments.cv import draw_folds, parse_args
    from tests.conftest import compose_cfg

    csv_path = write_volume_manifest(tmp_path / "data")
    cfg = compose_cfg(
        [
            "task=segmentation",
            "model=unet",
            f"dataset={dataset}",
            f"dataset.path={csv_path}",
            "dataset.num_classes=3",
            "dataset.val_size=1",
            "dataset.test_size=1",
            "dataset.group_column=patient",
            *(["augmentation=volume"] if dataset == "nifti_volumes" else []),
        ]
    )
    path = draw_folds(parse_args([f"cv.dir={tmp_path / 'cv'}", "cv.folds=3"]), cfg)
    folds = json.loads(path.read_text())
    assert folds["grouped"] is True
    assert folds["group"] == [PATIENT_OF[c] for c in folds["ids"]]  # volumes, not slices
    fold_of: dict[str, int] = {}
    for case, fold in zip(folds["ids"], folds["fold"], strict=True):
        assert fold_of.setdefault(PATIENT_OF[case], fold) == fold
    assert sorted(fold_of.values()) == [0, 0, 1, 1, 2]  # 5 patients in 3 folds
    assert sorted(folds["ids"] + folds["test"]) == sorted(PATIENT_OF)
    assert not {PATIENT_OF[c] for c in folds["test"]} & set(fold_of)
    datasets = build_datasets(cfg)
    for fold in range(3):
        fold_train, fold_val = fold_datasets(
            datasets["train"], datasets["val"], path, fold, None, None
        )
        for data in (fold_train, fold_val):
            assert data.groups == [PATIENT_OF[c] for c in data.cases]
        assert {PATIENT_OF[c] for c in fold_val.cases} == {
            p for p, f in fold_of.items() if f == fold
        }


def test_a_patient_in_two_splits_of_a_volume_manifest_is_warned(tmp_path):
    """A split column (or dataset.split_file) putting a patient's volumes in two splits is a
    `groups_in_splits` data warning, recorded by the train split and reported by the data check
    (an error with check_data_duplicates=error)."""
    from medtrain.data.validation import built_warnings
    from medtrain.engine.config import compose_config
    from medtrain.engine.data_check import check_config

    splits = ["train", "test", "train", "train", "val", "val", "train", "train", "test", "train"]
    csv_path = write_volume_manifest(tmp_path / "data", splits)  # p0 in train and test
    said = (
        f"{csv_path}: 1 of 6 groups (dataset.group_column; e.g. p0) have rows in more than one "
        "split of column 'split' (1 in train and test): test holds groups the model trained on, "
        "so its metrics are optimistic"
    )
    for kind in (VolumeSlices, NiftiVolumes):
        datasets = {
            s: kind(str(csv_path), s, num_classes=3, group_column="patient") for s in SPLITS
        }
        assert datasets["test"].cases == ["case_01", "case_08"]  # the column's split
        assert datasets["train"].data_warnings == {"groups_in_splits": said}
        assert built_warnings(datasets) == {"groups_in_splits": said}
        assert built_warnings({"train": kind(str(csv_path), "train", num_classes=3)}) == {}
    split_file = tmp_path / "splits.json"  # p1 in train and val, p2 in val and test
    lists = {
        "train": ["case_00", "case_03", "case_06", "case_07", "case_09"],
        "val": ["case_02", "case_04"],
        "test": ["case_05"],
    }
    split_file.write_text(json.dumps(lists))
    train = NiftiVolumes(
        str(csv_path), "train", num_classes=3, group_column="patient", split_file=str(split_file)
    )
    assert train.cases == lists["train"] and train.groups == ["p0", "p1", "p3", "p3", "p5"]
    assert train.data_warnings["groups_in_splits"] == (
        f"{csv_path}: 2 of 5 groups (dataset.group_column; e.g. p1, p2) have rows in more than "
        f"one split of column '{split_file}' (1 in train and val; 1 in val and test): val holds "
        "groups the model trained on; test holds groups the best checkpoint and threshold were "
        "chosen on, so their metrics are optimistic"
    )
    # A patient in val and test only: test holds what the checkpoint was chosen on.
    train_cases = ["case_00", "case_01", "case_06", "case_07", "case_08", "case_09"]
    lists = {"train": train_cases, "val": ["case_04"], "test": ["case_05", "case_02", "case_03"]}
    split_file.write_text(json.dumps(lists))  # p2: case_04 in val, case_05 in test
    train = NiftiVolumes(
        str(csv_path), "train", num_classes=3, group_column="patient", split_file=str(split_file)
    )
    assert train.data_warnings["groups_in_splits"].endswith(
        "(1 in val and test): test holds groups the best checkpoint and threshold were chosen "
        "on, so its metrics are optimistic"
    )
    base = ["dataset=nifti_volumes", f"dataset.path={csv_path}", "dataset.num_classes=3"]
    base += ["dataset.group_column=patient", "augmentation=mri_volume", "task=segmentation"]
    base += ["model=unet", "loss=dice_ce"]
    report = check_config(compose_config(base), workers=1, progress=False)
    assert report["errors"] == [] and said in report["warnings"]
    report = check_config(compose_config(base), workers=1, duplicates="error", progress=False)
    assert report["errors"] == [said]


def test_volume_group_column_errors_name_the_fix(tmp_path):
    """dataset.group_column needs a CSV manifest; a missing column names the CSV and its header,
    an empty cell its line."""
    csv_path = write_volume_manifest(tmp_path)
    for kind in (VolumeSlices, NiftiVolumes):
        with pytest.raises(
            ConfigError, match=r"dataset.group_column='patient' needs a CSV manifest"
        ):
            kind(str(tmp_path), "train", num_classes=3, group_column="patient")
        with pytest.raises(
            DataError,
            match=re.escape(f"{csv_path}: no column 'patient_id' for dataset.group_column")
            + r".*the CSV has columns \['image', 'mask', 'patient'\]",
        ):
            kind(str(csv_path), "train", num_classes=3, group_column="patient_id")
    csv_path.write_text(csv_path.read_text().replace(",p1\n", ",\n", 1))  # line 4
    with pytest.raises(
        DataError, match=r"cases.csv: column 'patient' \(dataset.group_column\) is empty: line 4$"
    ):
        VolumeSlices(str(csv_path), "train", num_classes=3, group_column="patient")


def test_a_dataset_spacing_of_slices_of_volumes_is_refused_not_ignored(tmp_path):
    make_cases(tmp_path, count=4)
    with pytest.raises(ConfigError, match=r"dataset.spacing=\[1.0, 1.0\]: the volumes state"):
        VolumeSlices(str(tmp_path), "train", num_classes=3, spacing=[1.0, 1.0])


def test_every_bad_volume_of_slices_is_named_at_once(tmp_path):
    """Slices of volumes read each case's label when the split is built: every bad case is
    named in one error (it stopped at the first, one fix at a time)."""
    make_cases(tmp_path, count=6)
    save_nifti(tmp_path / "labels" / "case_01.nii.gz", np.zeros((12, 20, 15), np.uint8))
    save_nifti(tmp_path / "labels" / "case_03.nii.gz", np.zeros((12, 20, 14), np.uint8))
    with pytest.raises(DataError) as err:
        VolumeSlices(str(tmp_path), "train", num_classes=3, val_size=0, test_size=0)
    lines = str(err.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["train case case_01", "train case case_03"]
    assert "label volume (12, 20, 15) does not match" in lines[0]


def test_mismatched_label_volume_is_named(tmp_path):
    make_cases(tmp_path, count=4)
    save_nifti(tmp_path / "labels" / "case_02.nii.gz", np.zeros((12, 20, 15), np.uint8))
    with pytest.raises(DataError, match=r"case_02.nii.gz: label volume \(12, 20, 15\) does not"):
        for split in ("train", "val", "test"):
            VolumeSlices(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)


def test_binary_label_volumes_saved_as_0_and_255_read_as_classes_0_and_1(tmp_path):
    """As a binary run's 2D masks: a label volume of {0, 255} (or {0, 1000}) is {0, 1}, for slices
    and whole volumes; a value over 255 of a multi-class run is named, never wrapped to a class."""
    make_cases(tmp_path, count=4)
    for n, value in ((0, 255), (1, 1000), (2, 1), (3, 255)):
        path = tmp_path / "labels" / f"case_{n:02d}.nii.gz"
        labels = np.asarray(nib.load(str(path)).dataobj) > 0
        save_nifti(path, (labels * value).astype(np.uint16), (1.0, 0.8, 1.5))
    for kind in (VolumeSlices, NiftiVolumes):
        data = kind(str(tmp_path), "train", num_classes=2, val_size=1, test_size=1)
        masks = [data.read_mask(i) for i in range(len(data.ids))]
        assert all(set(np.unique(m)) <= {0, 1} for m in masks) and any(m.any() for m in masks)
    three = tmp_path / "labels" / "case_01.nii.gz"
    labels = np.asarray(nib.load(str(three)).dataobj)
    save_nifti(three, np.where(labels > 0, 300, 0).astype(np.uint16), (1.0, 0.8, 1.5))
    with pytest.raises(DataError, match="300"):  # 300 read as uint8 was 44, a class of none
        for split in ("train", "val", "test"):
            data = NiftiVolumes(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)
            for i in range(len(data.ids)):
                data.checked_mask(i, data.read_image(i).shape)


def test_label_volume_shifted_against_its_image_is_named(tmp_path):
    """A label 3 mm off its image (misregistered, another origin) would be trained on and scored
    as if it matched: refused, by the slices and the whole-volume datasets alike."""
    make_cases(tmp_path, count=4)  # voxels of 1 x 0.8 x 1.5 mm, origin (10, -20, 5)
    path = tmp_path / "labels" / "case_01.nii.gz"
    stored = nib.load(str(path))
    affine = stored.affine.copy()
    affine[:3, 3] += [3.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.asarray(stored.dataobj), affine), str(path))
    said = r"case_01.nii.gz: its first voxel lies \(\+3 \+0 \+0\) mm from the image's .*3.0 voxels along an axis"
    with pytest.raises(DataError, match=said):
        for split in ("train", "val", "test"):
            VolumeSlices(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)
    datasets = [
        NiftiVolumes(str(tmp_path), s, num_classes=3, val_size=1, test_size=1) for s in SPLITS
    ]
    with pytest.raises(DataError, match=said):
        for dataset in datasets:
            for k in range(len(dataset.ids)):
                dataset.read_spacing(k)
    affine[:3, 3] -= [2.7, 0.0, 0.0]  # 0.3 mm: within half a voxel (rounding of a header)
    nib.save(nib.Nifti1Image(np.asarray(stored.dataobj), affine), str(path))
    for split in ("train", "val", "test"):
        VolumeSlices(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)


def test_label_volume_of_another_voxel_size_is_named(tmp_path):
    make_cases(tmp_path, count=4)  # voxels of 1 x 0.8 x 1.5 mm
    labels = np.asarray(nib.load(str(tmp_path / "labels" / "case_01.nii.gz")).dataobj)
    save_nifti(tmp_path / "labels" / "case_01.nii.gz", labels, spacing=(2.0, 0.8, 1.5))
    with pytest.raises(
        DataError,
        match=r"case_01.nii.gz: voxels of 2 x 0.8 x 1.5 mm, the image's are 1 x 0.8 x 1.5 mm",
    ):
        for split in ("train", "val", "test"):
            VolumeSlices(str(tmp_path), split, num_classes=3, val_size=1, test_size=1)


def test_stack_slices_reassembles_along_the_axis():
    volume = np.arange(60).reshape(3, 4, 5)
    for axis in range(3):
        slices = [np.take(volume, k, axis=axis) for k in range(volume.shape[axis])]
        np.testing.assert_array_equal(stack_slices(slices, axis), volume)


@pytest.mark.slow
def test_training_scores_reassembled_volumes(tmp_path):
    """Slices are trained on, then each test volume is reassembled: its NIfTI mask keeps the
    case's affine, volumes.csv holds the hand count x voxel volume, and the 3D Dice in
    per_case_metrics.csv is the Dice of the saved mask against the label volume."""
    data = tmp_path / "data"
    make_cases(data, count=8)
    run = tmp_path / "run"
    train_in_process(
        run,
        [
            "experiment=hippocampus2d",
            f"dataset.path={data}",
            "dataset.val_size=2",
            "dataset.test_size=2",
            "dataset.patch_size=[24,16]",
            "dataset.class_names=[background,box,ball]",
            "model.base_width=8",
            "trainer.max_epochs=3",
            "trainer.batch_size=8",
            "trainer.progress=false",
            "optimizer.lr=1e-2",
        ],
    )
    metrics = read_metrics(run)
    assert metrics["test/dice"] > 0.5
    voxel_ml = 1.0 * 0.8 * 1.5 / 1000
    rows = rows_of(run / "volumes.csv")
    per_case = {r["id"]: r for r in rows_of(run / "per_case_metrics.csv")}
    assert len(per_case) == 2
    for case in per_case:
        labels = np.asarray(nib.load(str(data / "labels" / f"{case}.nii.gz")).dataobj)
        saved = nib.load(str(run / "masks" / f"{case}.nii.gz"))
        pred = np.asarray(saved.dataobj)
        assert pred.shape == labels.shape
        np.testing.assert_allclose(
            saved.affine, nib.load(str(data / "labels" / f"{case}.nii.gz")).affine
        )
        for k, name in ((1, "box"), (2, "ball")):
            row = next(r for r in rows if r["id"] == case and r["class"] == name)
            assert float(row["true_ml"]) == pytest.approx((labels == k).sum() * voxel_ml)
            assert float(row["pred_ml"]) == pytest.approx((pred == k).sum() * voxel_ml)
            assert row["true_objects"] == "1"  # one box, one ball per case (make_cases)
            both = np.logical_and(pred == k, labels == k).sum()
            dice = 2 * both / ((pred == k).sum() + (labels == k).sum())
            assert float(per_case[case][f"dice_{name}"]) == pytest.approx(dice)
    assert "test/volume_mae_ml_box" in metrics and "test/dice_ball" in metrics
    # medtrain predict on the test volumes gives the evaluation's own label volumes and volumes.
    from medtrain.commands.predict import main as predict

    out = tmp_path / "predicted" / "preds.csv"
    files = [data / "images" / f"{case}.nii.gz" for case in per_case]
    manifest = tmp_path / "volumes.csv"
    manifest.write_text("image\n" + "\n".join(str(f) for f in files) + "\n")
    twin = tmp_path / "other" / files[0].name  # the same file name in another folder
    twin.parent.mkdir()
    twin.write_bytes(files[1].read_bytes())
    manifest.write_text("image\n" + "\n".join(str(f) for f in [*files, twin]) + "\n")
    assert predict([f"run_dir={run}", f"inputs={manifest}", f"output={out}"]) == 0
    predicted = rows_of(out)
    assert len({r["mask"] for r in predicted}) == 3  # no mask overwrites another
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(out.parent / predicted[2]["mask"])).dataobj),
        np.asarray(nib.load(str(out.parent / predicted[1]["mask"])).dataobj),
    )
    # Single slices would miss the per-volume normalization: refused with the reason.
    from medtrain.data.readers import Decoded
    from medtrain.errors import DataError
    from medtrain.inference.predictor import Predictor

    with pytest.raises(DataError, match="trained on slices of volumes"):
        Predictor(run).predict([Decoded(np.zeros((20, 16), np.float32), None, "npy")], ["x"])
    # The service segments an uploaded volume slice by slice, as predict does (mask_nifti in
    # the file's own voxel order, volumes in mL), batched with other requests' slices.
    import base64
    import gzip

    from medtrain.inference.serve import create_app
    from tests.inference.test_serve import fetch, post, start, stop

    expected = Predictor(run).predict_volume(files[0], files[0].name)
    running = start(create_app(Predictor(run)))
    try:
        assert json.loads(fetch(running.port, "GET", "/info")[2])["input"]["formats"] == ["nifti"]
        status, answer = post(
            running.port, "/predict?mask_nifti=true", ("file", "case.nii.gz", files[0].read_bytes())
        )
        assert status == 200, answer
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["mask_nifti"])))
        np.testing.assert_array_equal(np.asarray(mask.dataobj), expected["mask"])
        np.testing.assert_allclose(mask.affine, expected["affine"])
        assert answer["volumes_ml"] == pytest.approx(expected["volumes_ml"])
        assert answer["objects"] == expected["objects"]
        status, refused = post(running.port, "/predict", ("file", "x.npy", np.zeros(3).tobytes()))
        assert status in (415, 422)
    finally:
        stop(running)
    # A blank slice (padding around the body) is segmented with the rest; a blank volume is not.
    padded = np.asarray(nib.load(str(files[0])).dataobj).copy()
    padded[:, :, 0] = padded[0] = 0.0
    save_nifti(tmp_path / "padded.nii.gz", padded, (1.0, 0.8, 1.5))
    assert Predictor(run).predict_volume(tmp_path / "padded.nii.gz", "padded")["mask"].shape == (
        padded.shape
    )
    save_nifti(tmp_path / "blank.nii.gz", np.zeros_like(padded), (1.0, 0.8, 1.5))
    with pytest.raises(DataError, match="blank: every voxel holds 0.0: a constant volume"):
        Predictor(run).predict_volume(tmp_path / "blank.nii.gz", "blank")
    for row in predicted[:2]:
        case = Path(row["file"]).name.removesuffix(".nii.gz")
        mine = np.asarray(nib.load(str(out.parent / row["mask"])).dataobj)
        np.testing.assert_array_equal(
            mine, np.asarray(nib.load(str(run / "masks" / f"{case}.nii.gz")).dataobj)
        )
        evaluated = next(r for r in rows if r["id"] == case and r["class"] == "box")
        assert float(row["volume_ml_box"]) == pytest.approx(float(evaluated["pred_ml"]))
    # medtrain evaluate on the test volumes and their labels scores what the run's test did.
    from medtrain.commands.evaluate import main as evaluate

    (data / "cases.csv").write_text(  # paths relative to the CSV
        "image,mask\n" + "".join(f"images/{c}.nii.gz,labels/{c}.nii.gz\n" for c in per_case)
    )
    assert (
        evaluate([f"run_dir={run}", f"inputs={data / 'cases.csv'}", f"output={tmp_path / 'ev'}"])
        == 0
    )
    scored = read_metrics(tmp_path / "ev")
    for key in ("test/dice", "test/dice_box", "test/volume_mae_ml_ball", "test/hd95_mm"):
        assert scored[key] == pytest.approx(metrics[key], abs=1e-6), key
    for row in rows_of(tmp_path / "ev" / "per_case_metrics.csv"):
        case = row["id"].removeprefix("images/").removesuffix(".nii.gz")
        assert float(row["dice_ball"]) == pytest.approx(float(per_case[case]["dice_ball"]))


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "dicom").is_dir(), reason="needs ../shared/data/dicom")
@pytest.mark.parametrize(
    "name, shape, spacing, stored",
    [
        # enhanced CT and a DICOM SEG (frames {0, 1}): their frames' plane geometry makes an
        # affine, and they are read in RAS order like a series (stored frames first)
        ("eCT_Supplemental.dcm", (512, 512, 2), (0.388672, 0.388672, 10.0), "SPR"),
        ("emri_small.dcm", (10, 64, 64), (1.2, 1.0, 1.0), None),  # no geometry: as stored
        ("liver.dcm", (512, 512, 3), (0.810547, 0.810547, 1.0), "SPL"),
    ],
)
def test_shared_multi_frame_files_load_as_volumes(name, shape, spacing, stored):
    volume = read_volume(SHARED_DATA / "dicom" / "single" / name)
    assert volume.array.shape == shape
    assert volume.spacing == pytest.approx(spacing)
    if stored is None:
        assert volume.stored_affine is None and volume.orientation == ("?", "?", "?")
    else:
        assert "".join(nib.aff2axcodes(volume.stored_affine)) == stored
        assert volume.orientation == ("R", "A", "S")
    assert volume.array.max() > volume.array.min()
    if name == "eCT_Supplemental.dcm":  # the intercept sits in the shared functional groups
        assert (volume.array.min(), volume.array.max()) == (-1024.0, 172.0)  # Hounsfield units


@pytest.mark.parametrize("zoom", [np.nan, np.inf, 1e30, 1e-9])  # nibabel reads a 0 as 1
def test_nifti_voxel_sizes_out_of_bounds_are_refused(tmp_path, zoom):
    image = nib.Nifti1Image(np.zeros((2, 3, 4), np.float32), np.eye(4))
    image.header["pixdim"][1:4] = [1.0, zoom, 1.0]
    nib.save(image, str(tmp_path / "z.nii.gz"))
    with pytest.raises(DataError, match=r"z.nii.gz: its header's voxel sizes \(pixdim\) states"):
        read_volume(tmp_path / "z.nii.gz")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(
    "value, shown", [("1e308", "1e+308"), ("NaN", "nan"), ("0", "0.0"), ("-1", "-1.0")]
)
def test_dicom_volume_spacings_out_of_bounds_are_refused(tmp_path, value, shown):
    import pydicom

    write_series(tmp_path / "series", [0.0, 3.0, 6.0])
    first = tmp_path / "series" / "file_00.dcm"
    ds = pydicom.dcmread(first)
    ds.PixelSpacing = [value, value]
    ds.save_as(first)
    expected = f"file_00.dcm: PixelSpacing states a pixel spacing of ({shown}, {shown})"
    with pytest.raises(DataError, match=re.escape(expected)):
        read_volume(tmp_path / "series")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("value", ["1e308", "NaN", "-1"])  # a thickness of 0 reads as unknown: 1 mm
def test_multi_frame_slice_thickness_out_of_bounds_is_refused(tmp_path, value):
    import pydicom

    write_series(tmp_path / "series", [0.0])
    ds = pydicom.dcmread(tmp_path / "series" / "file_00.dcm")
    ds.NumberOfFrames, ds.SliceThickness = 2, value  # a two-frame volume file
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "frames.dcm")
    with pytest.raises(DataError, match="frames.dcm: its SpacingBetweenSlices/SliceThickness"):
        read_volume(tmp_path / "frames.dcm")


def test_dicom_series_slices_too_far_apart_are_refused(tmp_path):
    import pydicom

    write_series(tmp_path / "far", [0.0, 1.0, 2.0])
    for k, path in enumerate(sorted((tmp_path / "far").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, 2e4 * k]  # slices 20 m apart
        ds.save_as(path)
    with pytest.raises(DataError, match=r"far: its slice positions and PixelSpacing .*20000.0"):
        read_volume(tmp_path / "far")


def test_slices_share_patches_by_their_size_from_the_geometry_alone(tmp_path, monkeypatch):
    """`dataset.patch_area_power` on slices: their sizes come from the volumes' geometry (no
    volume is read for them); slices of one size keep the order of earlier releases."""
    make_cases(tmp_path, count=4)
    train = VolumeSlices(
        str(tmp_path),
        "train",
        num_classes=3,
        val_size=1,
        test_size=1,
        axis=1,
        patches_per_image=2,
        patch_area_power=1.0,
    )
    monkeypatch.setattr(train, "_image_volume", lambda case: pytest.fail(f"{case} was read"))
    assert {train.model_shape(i) for i in range(len(train.ids))} == {(12, 16)}
    assert train.sample_images == list(range(len(train.ids))) * 2


def test_the_data_check_reads_voxel_sizes_as_training_does(tmp_path):
    """`dataset.spacing` against files that state another voxel size is an error per file (it was
    ignored, the mL computed from the files'); an image and label of other voxel sizes, which
    training refuses, are found by the check too."""
    from medtrain.engine.config import compose_config
    from medtrain.engine.data_check import check_config

    make_cases(tmp_path / "data", count=5)  # voxels of 1 x 0.8 x 1.5 mm
    base = ["dataset=nifti_volumes", f"dataset.path={tmp_path / 'data'}", "dataset.num_classes=3"]
    base += ["dataset.val_size=1", "dataset.test_size=1", "augmentation=mri_volume"]
    base += ["task=segmentation", "model=unet", "loss=dice_ce"]

    def check(*extra: str) -> dict:
        report = check_config(compose_config([*base, *extra]), workers=1, progress=False)
        assert report["config_errors"] == []
        return report

    assert check()["errors"] == []
    assert check("dataset.spacing=[1.0,0.8,1.5]")["errors"] == []  # what the files state
    errors = check("dataset.spacing=[0.8,0.8,2.5]")["errors"]
    assert len(errors) == 5 and all(
        "the file states voxels of 1 x 0.8 x 1.5 mm, dataset.spacing=[0.8, 0.8, 2.5]" in e
        for e in errors
    )
    labels = np.asarray(nib.load(str(tmp_path / "data" / "labels" / "case_01.nii.gz")).dataobj)
    save_nifti(tmp_path / "data" / "labels" / "case_01.nii.gz", labels, spacing=(2.0, 0.8, 1.5))
    assert [e for e in check()["errors"] if "voxels of 2 x 0.8 x 1.5 mm, the image's" in e]


def test_missing_volume_files_are_listed_together_and_no_label_is_dropped(tmp_path):
    """A volume manifest's missing files are named at once (they came one per run); a label
    volume without its image in the folder layout is an error (its case was dropped silently)."""
    csv_path = write_volume_manifest(tmp_path / "csv")
    for n in (1, 4):
        (tmp_path / "csv" / "images" / f"case_{n:02d}.nii.gz").unlink()
    (tmp_path / "csv" / "labels" / "case_07.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        VolumeSlices(str(csv_path), "train", num_classes=3)
    assert str(err.value).startswith(f"{csv_path}: 3 file(s) missing: line 3: ")
    assert "line 6: " in str(err.value) and "labels/case_07.nii.gz does not exist" in str(err.value)
    make_cases(tmp_path / "folder", count=4)
    (tmp_path / "folder" / "images" / "case_02.nii.gz").unlink()
    with pytest.raises(DataError, match=r"no image volume for 1 label volume\(s\) .* case_02"):
        NiftiVolumes(str(tmp_path / "folder"), "train", num_classes=3, val_size=1, test_size=1)


def test_a_run_writes_its_test_masks_in_each_file_s_own_voxel_order(tmp_path):
    """Volumes stored slice-first are read in RAS order; the run's masks/ are written back in
    each file's own order with its affine (as medtrain predict and evaluate write them), so
    that they compare with the label files array for array."""
    data = tmp_path / "data"
    make_cases(data, count=6)
    for folder in ("images", "labels"):  # each file stored slice-first, the affine saying so
        for path in (data / folder).glob("*.nii.gz"):
            stored = nib.load(str(path))
            affine = stored.affine[:, [2, 1, 0, 3]]
            turned = np.asarray(stored.dataobj).transpose(2, 1, 0)
            nib.save(nib.Nifti1Image(turned, affine), str(path))
    run = tmp_path / "run"
    train_in_process(
        run,
        [
            "experiment=hippocampus2d",
            f"dataset.path={data}",
            "dataset.val_size=1",
            "dataset.test_size=2",
            "dataset.patch_size=[24,16]",
            "dataset.class_names=[background,box,ball]",
            "model.base_width=8",
            "trainer.max_epochs=1",
            "trainer.progress=false",
            "trainer.report=false",
        ],
    )
    per_case = {r["id"]: r for r in rows_of(run / "per_case_metrics.csv")}
    assert len(per_case) == 2
    for case, row in per_case.items():
        label = nib.load(str(data / "labels" / f"{case}.nii.gz"))
        saved = nib.load(str(run / "masks" / f"{case}.nii.gz"))
        np.testing.assert_allclose(saved.affine, label.affine)
        pred, true = np.asarray(saved.dataobj), np.asarray(label.dataobj)
        assert pred.shape == true.shape == (16, 20, 12)  # stored slice-first
        for k, name in ((1, "box"), (2, "ball")):
            both = np.logical_and(pred == k, true == k).sum()
            total = (pred == k).sum() + (true == k).sum()
            dice = 2 * both / total if total else float("nan")
            assert float(row[f"dice_{name}"]) == pytest.approx(dice, nan_ok=True)
