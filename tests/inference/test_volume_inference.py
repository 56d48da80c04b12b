"""A 3D network's run after training: `medtrain predict` on NIfTI files writes NIfTI masks with the
input's affine and volumes in mL; `/predict` takes .nii/.nii.gz uploads (their voxel count checked
from the header before anything is decompressed); ONNX export computes what PyTorch does."""

import base64
import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf

from medtrain.data import volumes
from medtrain.data.decoding import ImageTooLargeError
from medtrain.data.synthetic_volumes import SyntheticVolumes
from medtrain.errors import ConfigError, DataError
from medtrain.inference.predict import predict_files
from medtrain.inference.predictor import Predictor
from medtrain.inference.serve import ServeLimits, create_app
from tests.conftest import ROOT, fail_if_called, train_in_process
from tests.hostile_files import make_dicom
from tests.inference.test_serve import post, start, stop

# An oblique affine with 2 x 1 x 1.5 mm voxels: a mask written with another would lie elsewhere.
AFFINE = np.array(
    [[0.0, 0.0, -1.5, 10.0], [0.0, 1.0, 0.0, -5.0], [2.0, 0.0, 0.0, 3.0], [0, 0, 0, 1]]
)


VOLUME_RUN = [
    "experiment=synthetic_segmentation3d",
    "dataset.num_train=8",
    "dataset.num_val=2",
    "dataset.num_test=2",
    "trainer.max_epochs=2",
    "model.base_width=4",
    "trainer.progress=false",
    "trainer.report=false",
]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vol") / "run"
    train_in_process(run_dir, VOLUME_RUN)
    return run_dir


def case_volume() -> np.ndarray:
    return SyntheticVolumes("test", seed=1, image_size=24, test_image_size=30, num_test=1).images[0]


def nifti(volume: np.ndarray, compress: bool = True) -> bytes:
    data = nib.Nifti1Image(volume.astype(np.float32), AFFINE).to_bytes()
    return gzip.compress(data) if compress else data


def predict_options(run: Path, inputs: Path, output: Path) -> dict:
    """`medtrain predict`'s options with their defaults (the command's config)."""
    return {
        "run_dir": str(run),
        "inputs": str(inputs),
        "output": str(output),
        "masks": None,
        "image_column": "image",
        "device": "cpu",
        "batch_size": 1,
        "progress": False,
        "spacing": None,
        "measurements": None,
    }


def test_predict_writes_nifti_masks_with_the_inputs_affine(volume_run, tmp_path):
    volume = case_volume()
    (tmp_path / "case.nii.gz").write_bytes(nifti(volume))
    cfg = predict_options(
        volume_run, tmp_path / "case.nii.gz", tmp_path / "out" / "predictions.csv"
    )
    summary = predict_files(OmegaConf.create(cfg))
    assert not summary["failed"]
    row = next(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    written = nib.load(tmp_path / "out" / row["mask"])
    np.testing.assert_array_equal(written.affine, AFFINE)
    labels = np.asarray(written.dataobj)
    assert labels.shape == volume.shape
    assert float(row["volume_ml_class_1"]) == pytest.approx((labels == 1).sum() * 3.0 / 1000)
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 2)  # task.connectivity 2: 18 neighbours
    assert int(row["objects_class_1"]) == ndimage.label(labels == 1, structure)[1]
    # The same mask as the run's own evaluation path computes for this volume, which is read in
    # RAS order (the file stores its axes as S, A, L) and the mask written back in the file's.
    predictor = Predictor(volume_run)
    ras = volumes.read_volume(tmp_path / "case.nii.gz")
    assert nib.aff2axcodes(AFFINE) == ("S", "A", "L") and ras.orientation == ("R", "A", "S")
    image, _ = predictor.preprocess.prepare(ras.array, 0, ras.spacing)
    with torch.no_grad():
        logits = predictor.task.infer(predictor.model, image[None], ras.array.shape)
    in_ras = predictor.task.predict_masks(logits)[0]
    np.testing.assert_array_equal(labels, volumes.to_stored(in_ras, ras.affine, AFFINE))
    # The same scan stored in RAS order is segmented alike: the same voxels, the same mL.
    nib.save(nib.Nifti1Image(ras.array, ras.affine), str(tmp_path / "ras.nii.gz"))
    cfg_ras = {**cfg, "inputs": str(tmp_path / "ras.nii.gz"), "output": str(tmp_path / "r.csv")}
    assert not predict_files(OmegaConf.create(cfg_ras))["failed"]
    again = next(csv.DictReader((tmp_path / "r.csv").open()))
    assert again["volume_ml_class_1"] == row["volume_ml_class_1"]
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / again["mask"]).dataobj), in_ras)
    # A sheared grid (a gantry-tilted CT): a voxel's volume is |det| of the affine, which its
    # voxel sizes (the columns' lengths, pixdim) overstated, and the volumes with them.
    sheared = ras.affine.copy()
    sheared[0, 1] = 0.3 * sheared[1, 1]
    nib.save(nib.Nifti1Image(ras.array, sheared), str(tmp_path / "tilted.nii.gz"))
    zooms = nib.load(tmp_path / "tilted.nii.gz").header.get_zooms()
    assert np.prod(zooms) > 1.04 * abs(np.linalg.det(sheared[:3, :3]))
    cfg_tilted = {
        **cfg_ras,
        "inputs": str(tmp_path / "tilted.nii.gz"),
        "output": str(tmp_path / "t" / "t.csv"),
    }
    assert not predict_files(OmegaConf.create(cfg_tilted))["failed"]
    tilted = next(csv.DictReader((tmp_path / "t" / "t.csv").open()))
    voxels = (np.asarray(nib.load(tmp_path / "t" / tilted["mask"]).dataobj) == 1).sum()
    det = abs(np.linalg.det(sheared[:3, :3]))
    assert float(tilted["volume_ml_class_1"]) == pytest.approx(voxels * det / 1000)
    # Its mask states the affine in the sform alone: a qform cannot hold a shear, and one of the
    # nearest rotation (code 1) put the mask elsewhere for readers that prefer the qform.
    header = nib.load(tmp_path / "t" / tilted["mask"]).header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (1, 0)
    np.testing.assert_allclose(header.get_sform(), sheared, atol=1e-5)
    assert (int(nib.load(tmp_path / again["mask"]).header["qform_code"])) == 1  # unsheared: both
    # An array file holds no voxel size: refused by name in its row, not skipped; a spacing is not
    # applied to volumes but refused.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case.nii.gz").write_bytes(nifti(volume))
    np.save(tmp_path / "in" / "array.npy", volume)
    cfg["inputs"] = str(tmp_path / "in")
    summary = predict_files(OmegaConf.create(cfg))
    assert [row["file"] for row in summary["failed"]] == ["array.npy"]
    assert "array.npy: an array file holds no voxel size" in summary["failed"][0]["error"]
    # Nor is a one-frame DICOM (a 2D image) a volume of one slice.
    (tmp_path / "slice.dcm").write_bytes(make_dicom(np.zeros((24, 24), np.uint16)))
    cfg["inputs"] = str(tmp_path / "slice.dcm")
    failed = predict_files(OmegaConf.create(cfg))["failed"]
    assert len(failed) == 1 and "slice.dcm: a DICOM of one frame (a 2D image)" in failed[0]["error"]
    cfg["inputs"] = str(tmp_path / "in")
    cfg["spacing"] = [0.5, 0.5]
    with pytest.raises(ConfigError, match="spacing=\\[0.5, 0.5\\]: this run reads volumes"):
        predict_files(OmegaConf.create(cfg))


def test_error_rows_begin_with_the_file_as_the_file_column_names_it(volume_run, tmp_path):
    """A reader's error named the file by its whole path, others by its name: rows of one CSV
    began either way."""
    (tmp_path / "in").mkdir()
    four_d = np.zeros((12, 12, 12, 2), np.float32)
    nib.save(nib.Nifti1Image(four_d, np.eye(4)), str(tmp_path / "in" / "fourd.nii.gz"))
    nib.save(nib.Nifti1Image(four_d[..., 0], np.eye(4)), str(tmp_path / "in" / "blank.nii.gz"))
    cfg = predict_options(volume_run, tmp_path / "in", tmp_path / "out" / "p.csv")
    failed = {r["file"]: r["error"] for r in predict_files(OmegaConf.create(cfg))["failed"]}
    assert failed["fourd.nii.gz"].startswith("fourd.nii.gz: NIfTI of shape (12, 12, 12, 2)")
    assert failed["blank.nii.gz"].startswith("blank.nii.gz: every voxel holds 0.0")


def test_an_output_in_a_file_s_place_is_refused_before_any_volume_is_segmented(
    volume_run, tmp_path, monkeypatch
):
    (tmp_path / "case.nii.gz").write_bytes(nifti(case_volume()))
    (tmp_path / "afile").write_text("x\n")

    fail_if_called(monkeypatch, Predictor, "predict_volume", "segmented")
    cfg = predict_options(
        volume_run, tmp_path / "case.nii.gz", tmp_path / "afile" / "predictions.csv"
    )
    with pytest.raises(ConfigError) as err:
        predict_files(OmegaConf.create(cfg))
    assert str(err.value) == (
        f"output={tmp_path / 'afile' / 'predictions.csv'}: {tmp_path / 'afile'} is a file, not a "
        "folder"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "case.nii.gz"]
    assert (tmp_path / "afile").read_text() == "x\n"


def test_a_segmentation_run_reads_volumes_as_stored_whatever_their_storage_type(volume_run):
    """A 3D segmentation run reads volumes in modality units, never scaled by their storage type
    (unlike a 3D classifier's, or a 2D image): an integer NIfTI is no other pixel scale. The first
    volume scale check refused a run's own uint16 training volumes (trained as float32)."""
    from medtrain.data.decoding import Decoded

    predictor = Predictor(volume_run)
    predictor.trained_values = ({"float32"}, 4999.0)  # as a run of uint16 NIfTI files records
    stored = np.round(case_volume() * 1000).clip(0, 4999).astype(np.uint16)
    item = predictor.prepare(Decoded(stored, (1.0, 1.0, 1.0), "volume", AFFINE), "c0.nii.gz")
    as_float = predictor.prepare(
        Decoded(stored.astype(np.float32), (1.0, 1.0, 1.0), "volume", AFFINE), "c0.nii.gz"
    )
    torch.testing.assert_close(item.tensor, as_float.tensor, rtol=0, atol=0)


def test_predict_finds_volumes_in_subfolders_as_bids_lays_them_out(volume_run, tmp_path, capsys):
    """sub-01/anat/T1w.nii.gz: the volumes below a folder are found (each subfolder was taken for
    a DICOM series), named by their path below it, each with a mask of its own."""
    from medtrain.commands.predict import main as predict

    data = nifti(case_volume())
    for subject in ("sub-01", "sub-02"):
        (tmp_path / "bids" / subject / "anat").mkdir(parents=True)
        (tmp_path / "bids" / subject / "anat" / "T1w.nii.gz").write_bytes(data)
    out = tmp_path / "out" / "p.csv"
    assert predict([f"run_dir={volume_run}", f"inputs={tmp_path / 'bids'}", f"output={out}"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["sub-01/anat/T1w.nii.gz", "sub-02/anat/T1w.nii.gz"]
    assert len({r["mask"] for r in rows}) == 2 and all(not r["error"] for r in rows)


def test_serve_answers_volumes_in_ml_and_the_mask_as_nifti(volume_run):
    volume = case_volume()
    running = start(create_app(Predictor(volume_run)))
    try:
        status, answer = post(
            running.port, "/predict?mask_nifti=true", ("file", "case.nii.gz", nifti(volume))
        )
        assert status == 200, answer
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["mask_nifti"])))
        np.testing.assert_array_equal(mask.affine, AFFINE)
        labels = np.asarray(mask.dataobj)
        assert list(labels.shape) == answer["mask_shape"] == list(volume.shape)
        assert answer["volumes_ml"]["class_1"] == pytest.approx((labels == 1).sum() * 3.0 / 1000)
        assert answer["spacing"] == [2.0, 1.0, 1.5]
        status, plain = post(running.port, "/predict", ("file", "case.nii", nifti(volume, False)))
        assert status == 200 and "mask_nifti" not in plain
        assert plain["volumes_ml"] == answer["volumes_ml"]
        # A .nii.gz uploaded under a name without its extension is known by its content.
        status, unnamed = post(running.port, "/predict", ("file", "scan", nifti(volume)))
        assert status == 200 and unnamed["volumes_ml"] == answer["volumes_ml"]
        buffer = io.BytesIO()
        np.save(buffer, volume)
        status, refused = post(running.port, "/predict", ("file", "v.npy", buffer.getvalue()))
        assert status == 422 and refused["detail"] == (
            "v.npy: an array file holds no voxel size or orientation; send this volume as NIfTI "
            "(.nii, .nii.gz), whose header states them"
        )  # as medtrain predict says it (not "not a 2D image")
        status, refused = post(
            running.port, "/predict?overlay=true", ("file", "case.nii", nifti(volume, False))
        )
        assert status == 422 and refused["detail"].startswith("overlay: pictures are of 2D")
        for given in ("1,1", "1,1,1"):  # one message for any spacing, as medtrain predict's
            status, refused = post(
                running.port,
                f"/predict?spacing={given}",
                ("file", "case.nii", nifti(volume, False)),
            )
            assert status == 422 and refused["detail"] == (
                f"spacing={given}: this run reads volumes, whose voxel size comes from each file "
                "(the NIfTI header, the DICOM series); spacing= is the pixel size of 2D images"
            )
    finally:
        stop(running)


def test_a_volume_over_the_voxel_limit_is_refused_before_decompression(volume_run, monkeypatch):
    """A 600^3 float32 volume (864 MB) as a gzip of 0.8 MB: refused from its header."""
    header = nib.Nifti1Header()
    header.set_data_shape((600, 600, 600))
    header.set_data_dtype(np.float32)
    head = io.BytesIO()
    header.write_to(head)
    body = head.getvalue() + b"\0" * 4  # the extension flag
    bomb = gzip.compress(body + b"\0" * (8 * 2**20))  # 8 MB of zeros follow the header
    inflated = []
    real = nib.Nifti1Image.from_bytes
    monkeypatch.setattr(
        nib.Nifti1Image, "from_bytes", classmethod(lambda cls, b: inflated.append(1) or real(b))
    )
    running = start(create_app(Predictor(volume_run), limits=ServeLimits(max_pixels=10**6)))
    try:
        status, answer = post(running.port, "/predict", ("file", "big.nii.gz", bomb))
    finally:
        stop(running)
    assert status == 413 and "216,000,000 voxels" in answer["detail"]
    assert not inflated


def test_onnx_export_of_a_3d_network_matches_pytorch(volume_run, tmp_path):
    from medtrain.inference.export import export

    manifest = export(str(volume_run), "onnx", str(tmp_path / "exported"))
    assert manifest["input"]["layout"] == "NCDHW"
    session = onnxruntime.InferenceSession(str(tmp_path / "exported" / "model.onnx"))
    predictor = Predictor(volume_run)
    image, _ = predictor.preprocess.prepare(case_volume()[:24, :20, :22], 0, (2.0, 1.0, 1.5))
    probabilities, logits = session.run(None, {"image": image[None].numpy()})
    with torch.no_grad():
        expected = predictor.model(image[None])
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(probabilities, expected.softmax(1).numpy(), atol=1e-5)
    # The example script for exports runs 2D models, and says what runs this one.
    example = ROOT / "examples" / "run_exported.py"
    volume = tmp_path / "v.npy"
    np.save(volume, case_volume())
    done = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "exported"), str(volume)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.startswith(
        "this example runs 2D models; this export takes NCDHW volumes: run model.onnx with "
        "onnxruntime on volumes prepared as manifest.json describes"
    )


def nifti_header(shape, offset: float | None = None) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    if offset is not None:
        header["vox_offset"] = offset
    head = io.BytesIO()
    header.write_to(head)
    return head.getvalue() + b"\0" * 4  # the extension flag


def test_decoding_inflates_no_more_than_the_header_declares(monkeypatch):
    """Gzip streams of zeros far longer than their headers declare: only the declared bytes are
    inflated; a voxel offset beyond the header's extensions is refused before inflating."""
    inflated = []
    real = volumes.zlib.decompressobj

    class Counting:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        @property
        def unconsumed_tail(self):
            return self.inner.unconsumed_tail

    monkeypatch.setattr(volumes.zlib, "decompressobj", Counting)
    zeros = b"\0" * (16 * 2**20)
    small = gzip.compress(nifti_header((10, 10, 10)) + zeros)  # 4,000 bytes of voxels declared
    volume = volumes.decode_nifti(small, "small.nii.gz", 10**6)
    assert volume.array.shape == (10, 10, 10) and sum(inflated) <= 352 + 4000
    inflated.clear()
    with pytest.raises(DataError, match="voxel offset"):
        volumes.decode_nifti(gzip.compress(nifti_header((4, 4, 4), 4e9) + zeros), "o.nii.gz", 10**6)
    assert sum(inflated) <= 540
    with pytest.raises(ImageTooLargeError, match="voxels"):
        volumes.decode_nifti(
            gzip.compress(nifti_header((600, 600, 600)) + zeros), "b.nii.gz", 10**6
        )
    with pytest.raises(DataError, match="truncated"):
        volumes.decode_nifti(nifti_header((10, 10, 10)) + b"\0" * 100, "t.nii", 10**6)


def test_volumes_are_read_as_modality_values_whatever_their_storage_type(volume_run):
    """A uint8 volume means what its float32 copy means (training reads NIfTI as float32)."""
    preprocess = Predictor(volume_run).preprocess
    stored = np.random.default_rng(0).integers(0, 255, (12, 14, 16), dtype=np.uint8)
    as_uint8, _ = preprocess.prepare(stored, 0, (1.0, 1.0, 1.0))
    as_float, _ = preprocess.prepare(stored.astype(np.float32), 0, (1.0, 1.0, 1.0))
    assert torch.equal(as_uint8, as_float)


def test_a_two_axis_spacing_for_a_volume_is_refused(volume_run):
    predictor = Predictor(volume_run)
    decoded = predictor.decode(nifti(case_volume()), "case.nii.gz")
    item = predictor.prepare(decoded, "case.nii.gz")
    with pytest.raises(DataError, match="3 \\(depth"):
        predictor.result(item, predictor.forward([item])[0], spacing=(0.5, 0.5))


def test_an_ensemble_of_3d_runs_is_one_network_that_predicts(volume_run, tmp_path):
    """`medtrain ensemble` (and a CV's fold ensemble) of 3D runs: one 3D network (each member
    checked as 3D; it was refused as "a 2D network"), predicting the members' mean."""
    from medtrain.inference.ensemble import run_ensemble

    other = tmp_path / "seed2"
    train_in_process(other, [*VOLUME_RUN, "seed=2", "dataset.seed=42"])  # the same volumes
    out = tmp_path / "ensemble"
    run_ensemble([volume_run, other], out)
    info = json.loads((out / "ensemble.json").read_text())
    assert info.get("no_network") is None and (out / "checkpoints" / "best.pt").is_file()
    assert Predictor(out).info()["members"] == 2  # what /info says of it
    volume = case_volume()
    members = [Predictor(run) for run in (volume_run, other)]
    ensemble = Predictor(out)
    with torch.no_grad():
        probabilities = []
        for predictor in members:
            image, _ = predictor.preprocess.prepare(volume, 0, (2.0, 1.0, 1.5))
            logits = predictor.task.infer(predictor.model, image[None], volume.shape)
            probabilities.append(torch.softmax(logits.float(), dim=1))
        image, _ = ensemble.preprocess.prepare(volume, 0, (2.0, 1.0, 1.5))
        averaged = ensemble.task.infer(ensemble.model, image[None], volume.shape)
    mean = torch.stack(probabilities).mean(0)
    # Each member's windows are blended as logits before the softmax, the network's as averaged
    # probabilities: equal up to that order (1.2e-3 measured), which a mask hardly sees.
    torch.testing.assert_close(torch.softmax(averaged.float(), dim=1), mean, atol=5e-3, rtol=0)
    same = (averaged.argmax(1) == mean.argmax(1)).float().mean()
    assert same > 0.999


def test_a_run_saved_before_volumes_were_read_in_ras_order_reads_them_as_trained(
    volume_run, tmp_path, caplog
):
    """A checkpoint without `volume_axes` read volumes in each file's stored order: it is given
    them so (with a warning), not transposed to RAS, which it never saw."""
    from medtrain.io import load_checkpoint, save_checkpoint

    old = tmp_path / "old"
    shutil.copytree(volume_run, old)
    best = old / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(best)
    assert checkpoint.pop("volume_axes") == "RAS"
    save_checkpoint(best, checkpoint)
    volume = case_volume()
    (tmp_path / "case.nii.gz").write_bytes(nifti(volume))  # stored S, A, L
    with caplog.at_level("WARNING"):
        predictor = Predictor(old)
    assert "was trained before volumes were read in RAS axis order" in caplog.text
    decoded = predictor.read(tmp_path / "case.nii.gz")
    np.testing.assert_array_equal(decoded.array, volume.astype(np.float32))  # as stored
    assert decoded.stored_affine is None
    ras = Predictor(volume_run).read(tmp_path / "case.nii.gz")  # a run of this release: RAS
    assert ras.stored_affine is not None and not np.array_equal(ras.array, decoded.array)


def test_evaluate_scores_label_volumes_as_the_run_s_own_test(volume_run, tmp_path, capsys, caplog):
    from medtrain.commands.evaluate import main
    from tests.inference.test_evaluate import assert_scores_as_the_run
    from tests.inference.test_predict import split_of

    test = split_of(volume_run)
    spacing = np.diag([2.0, 1.0, 1.0, 1.0])  # the dataset's voxels, in RAS order as stored
    # The last case stored slice-first (its axes reversed, the affine saying so): read in RAS
    # order it is the same volume; its mask is written in its own order, as predict writes it.
    turned = np.array([[0.0, 0, 2, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    lines = ["image,mask"]
    for k, case in enumerate(test.ids):
        last = k == len(test.ids) - 1
        image, label = np.asarray(test.read_image(k), np.float32), np.asarray(test.read_mask(k))
        if last:
            image, label = image.transpose(2, 1, 0), label.transpose(2, 1, 0)
        affine = turned if last else spacing
        nib.save(nib.Nifti1Image(image, affine), tmp_path / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), tmp_path / f"{case}_label.nii.gz")
        lines.append(f"{case}.nii.gz,{case}_label.nii.gz")
    labelled = tmp_path / "cases.csv"
    labelled.write_text("\n".join(lines) + "\n")
    out = tmp_path / "external"
    keys = ("test/dice", "test/dice_class_1", "test/hd95_mm", "test/volume_mae_ml_class_1")
    assert_scores_as_the_run(volume_run, labelled, out, keys)
    from medtrain.inference.serve import used_parameters

    assert used_parameters(Predictor(volume_run)) == {"mask_nifti"}  # what /predict names
    with open(out / "volumes.csv", newline="") as f:
        volumes = list(csv.DictReader(f))
    assert [r["id"] for r in volumes] == [f"{case}.nii.gz" for case in test.ids]
    last = test.ids[-1]
    written = nib.load(str(out / "masks" / f"{last}.nii.gz"))  # not .nii.gz.nii.gz
    np.testing.assert_allclose(written.affine, turned)  # the file's own order and affine
    predicted = Predictor(volume_run).predict_volume(tmp_path / f"{last}.nii.gz", last)
    np.testing.assert_array_equal(np.asarray(written.dataobj), predicted["mask"])
    # A label of other voxels, or of another size, is named; nothing is written.
    first = test.ids[0]
    nib.save(
        nib.Nifti1Image(np.asarray(test.read_mask(0), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0])),
        tmp_path / f"{first}_label.nii.gz",
    )
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), turned),  # the turned case's axes
        tmp_path / f"{test.ids[1]}_label.nii.gz",
    )
    out2 = tmp_path / "refused"
    assert main([f"run_dir={volume_run}", f"inputs={labelled}", f"output={out2}"]) == 1
    err = capsys.readouterr().err
    assert f"line 2: {tmp_path / (first + '_label.nii.gz')}: voxels of 1 x 1 x 1 mm" in err
    assert f"line 3: {tmp_path / (test.ids[1] + '_label.nii.gz')}: the label volume is 4x4x4" in err
    assert not out2.exists()
    # A spacing column is not read (a volume's voxels come from its file): said by evaluate and
    # predict alike, which score and predict from the files' voxel sizes.
    from medtrain.commands.predict import main as predict

    spaced = tmp_path / "spaced.csv"
    last_label = np.asarray(test.read_mask(len(test.ids) - 1), np.uint8).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(last_label, turned), tmp_path / f"{test.ids[-1]}_label.nii.gz")
    spaced.write_text(f"image,mask,spacing\n{lines[-1]},0.5\n")
    said = f"{spaced}: column 'spacing' is not read: this run reads volumes"
    with caplog.at_level("WARNING"):
        assert main([f"run_dir={volume_run}", f"inputs={spaced}", f"output={tmp_path / 'ev'}"]) == 0
        assert said in caplog.text
        caplog.clear()
        out = tmp_path / "p.csv"
        assert predict([f"run_dir={volume_run}", f"inputs={spaced}", f"output={out}"]) == 0
        assert said in caplog.text
