"""Config errors stop before training with a message naming the key and the valid choices."""

import pytest
import torch

from medtrain.engine.config import resolve_device, unknown_key_hint, validate
from medtrain.errors import ConfigError
from tests.conftest import CONF, compose_cfg, run_cli

GROUPS = [
    "dataset",
    "augmentation",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "task",
    "experiment",
]


def test_every_group_exists_and_every_option_composes():
    for group in GROUPS:
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        assert options, group
        for option in options:
            overrides = [f"{group}={option}"]
            if group == "dataset" and option != "synthetic":
                overrides.append("dataset.path=.")
            compose_cfg(overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0: must be a number > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001: must be a number > 0"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1: must be >= 0"),
        ("optimizer=sgd optimizer.momentum=2", "optimizer.momentum=2: must be in [0, 1)"),
        ("+optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
        ("trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        ("trainer.num_workers=-1", "trainer.num_workers=-1: must be an integer >= 0"),
        (
            "trainer.precision=16",
            "trainer.precision=16: choose one of ('auto', '32', 'bf16', 'fp16')",
        ),
        (
            "trainer.compile=fast",
            "trainer.compile='fast': choose false, true or a torch.compile mode",
        ),
        ("trainer.channels_last=1", "trainer.channels_last=1: must be true or false"),
        ("trainer.device=gpu", "trainer.device='gpu': choose one of auto, cpu, cuda, cuda:N"),
        ("trainer.gradient_clip_norm=0", "trainer.gradient_clip_norm=0: must be null or > 0"),
    ],
)
def test_bad_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(override.split(" ")))
    assert message in str(err.value)


REGRESSION = ["task=regression", "dataset=synthetic_clinical", "loss=mse"]
SEGMENTATION = ["dataset=synthetic_segmentation", "task=segmentation", "model=unet", "loss=dice"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task.tta=hflp"],
            "task.tta='hflp': choose null or one of ['hflip', 'flips', 'dihedral']",
        ),
        (
            [*REGRESSION, "task.ordinal=true", "task.grade_range=[4,0]"],
            "task.grade_range=[4, 0] must be [lowest, highest]",
        ),
        ([*REGRESSION, "task.target_std=[0]"], "task.target_std=[0.0] must be > 0"),
        ([*REGRESSION, "task.cut_points=mean"], "task.cut_points='mean': choose round or fitted"),
        ([*REGRESSION, "loss=huber", "loss.delta=-1"], "loss.delta=-1: must be a number > 0"),
        (["task.threshold=2"], "task.threshold=2 must be in (0, 1)"),
        (["task.monitor_mode=up"], "task.monitor_mode='up': choose 'max' or 'min'"),
        ([*SEGMENTATION, "task.connectivity=3"], "task.connectivity=3: use 1 (4-) or 2"),
        ([*SEGMENTATION, "+task.inference.windw=3"], "task.inference has unknown keys ['windw']"),
        ([*SEGMENTATION, "task.instances={method:x}"], "task.instances.method='x': choose one"),
    ],
)
def test_task_and_loss_settings_are_refused_before_the_data_are_read(overrides, message):
    """Values the task or its loss refuse were found only when the task was built, after the
    data check had written into the run folder (and `check-data` passed them)."""
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    assert message in str(err.value)


def test_settings_the_data_decide_are_not_refused_before_the_data_are_read():
    """Class names left to the data (null until they are read): a task that needs them is
    checked when it is built, not refused by the early check (and saved runs resume)."""
    segmentation = ["dataset=synthetic_segmentation", "task=segmentation", "model=unet"]
    validate(compose_cfg([*segmentation, "loss=dice", "task.instances={method:watershed}"]))
    validate(compose_cfg([*REGRESSION, "task.ordinal=true", "task.cut_points=fitted"]))


def test_keys_medtrain_does_not_read_are_refused_by_their_closest(tmp_path, caplog):
    """A trainer key added by `+` or in an experiment file, and a root key named like one of
    medtrain's, were kept silently and the run used the value they were meant to change. A root
    key of one's own (for interpolations) is kept."""
    with pytest.raises(ConfigError, match="max_epoch is not a key .*did you mean trainer.max_e"):
        validate(compose_cfg(["+trainer.max_epoch=3"]))
    with pytest.raises(ConfigError, match="seeed is not a key medtrain reads: did you mean seed?"):
        validate(compose_cfg(["+seeed=1"]))
    # One's own: a root key for interpolations, a plural, a value where medtrain has a section;
    # a trainer key for one's own callbacks is kept with a warning.
    for own in ("+paths.data_root=/data", "+seeds=[1,2,3]", "+mode=fast", "+datasets.root=/d"):
        validate(compose_cfg([own]))
    with caplog.at_level("WARNING"):
        validate(compose_cfg(["+trainer.log_every=3"]))
    assert "trainer.log_every is not a key medtrain reads: kept for your own code" in caplog.text
    experiments = tmp_path / "experiment"
    experiments.mkdir()
    (experiments / "typo.yaml").write_text("# @package _global_\ntrainer:\n  max_epoch: 1\n")
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path}]", "experiment=typo"])
    with pytest.raises(ConfigError, match="did you mean trainer.max_epochs"):
        validate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="trainer.device='cuda': CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        validate(compose_cfg(["trainer.precision=fp16", "trainer.device=cpu"]))


def test_missing_and_absent_dataset_path(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path is required for dataset="):
        validate(compose_cfg(["dataset=medmnist"]))
    with pytest.raises(ConfigError, match=r"dataset.path='.*nope.npz': does not exist"):
        validate(compose_cfg(["dataset=medmnist", f"dataset.path={tmp_path / 'nope.npz'}"]))


def test_unknown_key_hint_lists_valid_keys_and_the_closest():
    hint = unknown_key_hint(["model=resnet18", "trainer.max_epoch=3", "optimizer.lr=1"])
    assert "unknown key 'trainer.max_epoch'" in hint and "Did you mean trainer.max_epochs?" in hint
    assert "batch_size" in hint and "optimizer.lr" not in hint
    assert "arch" in unknown_key_hint(["model=resnet18", "model.archh=x"])
    top = unknown_key_hint(["modle=resnet18"])
    assert "unknown key 'modle'" in top and "Did you mean model?" in top
    # A key whose value is missing (`path: ???`) exists: only the misspelt key is named.
    hint = unknown_key_hint(["dataset=manifest", "dataset.path=x.csv", "trainer.max_epoch=1"])
    assert "dataset.path" not in hint and "unknown key 'trainer.max_epoch'" in hint
    # group paths are Hydra's to judge (a grid's exit 1 with them must not read as a typo)
    assert unknown_key_hint(["hydra/launcher=basic", "hydra/job_logging=disabled"]) is None


@pytest.mark.slow
def test_cli_errors_stop_before_training(tmp_path, capsys):
    """`medtrain` (the same entry point as the command, in this process) exits 2 with one clear
    line for a misspelt option, an unknown key and a bad value, before anything is trained."""
    from medtrain.commands import main

    assert main(["model=resnt18", f"hydra.run.dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert "Could not find 'model/resnt18'" in err and "resnet18" in err
    assert main(["trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'b'}"]) == 2
    assert "Did you mean trainer.max_epochs?" in capsys.readouterr().err
    assert main(["optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'c'}"]) == 2
    out = capsys.readouterr()
    assert "optimizer.lr=-1: must be a number > 0" in out.out + out.err
    assert "Traceback" not in out.err and not (tmp_path / "c" / "checkpoints").exists()


def test_an_interpolation_in_an_override_is_refused_by_its_key_and_leaves_no_folder(
    tmp_path, capsys
):
    """`${...}` in an override stays text when the refused run is tidied up: one line naming the
    key (it was a traceback, exit 1, and a folder left behind), and no folder either when the
    interpolation resolves but another value is refused."""
    from medtrain.commands import main

    assert main([f"hydra.run.dir={tmp_path / 'x'}", "optimizer.lr=${nope}"]) == 2
    said = capsys.readouterr()
    assert "optimizer.lr: Interpolation key 'nope' not found" in said.out + said.err
    assert "Traceback" not in said.err and not (tmp_path / "x").exists()
    refused = ["optimizer.lr=-1", "trainer.eval_batch_size=${trainer.batch_size}"]
    assert main([*refused, f"hydra.run.dir={tmp_path / 'y'}"]) == 2
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_cli_help_lists_groups():
    done = run_cli("train", "--help")
    assert done.returncode == 0
    assert "== medtrain train ==" in done.stdout
    for group in GROUPS:
        assert f"{group}:" in done.stdout
    assert "resnet18" in done.stdout and "pneumoniamnist" in done.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=bce"], "loss=bce trains independent sigmoid outputs"),
        (["loss.class_weights=[1.0,2.0,3.0]"], "loss.class_weights has 3 values for 2 classes"),
        (["loss=focal", "loss.alpha=[1.0,-1.0]"], "loss.alpha=[1.0, -1.0]: weights must be >= 0"),
        (
            ["dataset.normalize.mean=[0.1,0.2]"],
            "dataset.normalize.mean=[0.1, 0.2]: give 1 value or 1",
        ),
        (["task.target_sensitivity=90"], "task.target_sensitivity=90: must be in (0, 1]"),
    ],
)
def test_config_checked_against_the_data(overrides, message):
    from medtrain.engine.config import check_against_data

    with pytest.raises(ConfigError) as err:
        check_against_data(compose_cfg(overrides))
    assert message in str(err.value)


def test_threshold_rule_on_multiclass_is_refused():
    from medtrain.engine.config import check_against_data

    cfg = compose_cfg(["task.threshold=youden"])
    cfg.dataset.num_classes = 4
    with pytest.raises(
        ConfigError, match="task.threshold='youden' applies to binary and multi-label"
    ):
        check_against_data(cfg)


def test_bad_optimizer_argument_names_the_group(tmp_path):
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError, match="optimizer: Nesterov momentum requires"):
        train_in_process(tmp_path, [*TINY, "optimizer=sgd", "optimizer.momentum=0"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.contrast=abc"], "dataset.contrast='abc': must be a number"),
        (["model.dropout=abc"], "model.dropout='abc': must be a number"),
        (["model.widths=abc"], "model.widths='abc': must be a list"),
        (["model.widths=[a,b]"], "model.widths=['a', 'b']: must be a list of whole numbers"),
        (["optimizer=sgd", "optimizer.momentum=abc"], "optimizer.momentum='abc': must be a number"),
        (
            ["scheduler=multistep", "scheduler.milestones=abc"],
            "scheduler.milestones='abc': must be a list",
        ),
        (  # epochs for fractions: the rate would never drop
            ["scheduler=multistep", "scheduler.milestones=[2,3]"],
            "scheduler.milestones=[2, 3]: milestones are fractions of training in (0, 1] (0.5: "
            "half-way), not epochs; [2, 3] lie outside it, as epochs too (trainer.max_epochs=2)",
        ),
        (
            ["scheduler=multistep", "scheduler.milestones=[1,2]"],
            "scheduler.milestones=[1, 2]: milestones are fractions of training in (0, 1] (0.5: "
            "half-way), not epochs; as epochs of trainer.max_epochs=2 they are "
            "scheduler.milestones=[0.5, 1.0]",
        ),
        (
            ["scheduler=none", "scheduler._target_=torch.optim.lr_scheduler.StepLR"],
            "scheduler._target_=torch.optim.lr_scheduler.StepLR: a schedule is called with "
            "(optimizer, epochs=, steps_per_epoch=)",
        ),
        (["model.hidden=1.5"], "model.hidden=1.5: must be a whole number"),
        (["dataset.image_size=0"], "dataset.image_size=0: use a whole number of 4 or more"),
        (["dataset.num_val=0"], "dataset.num_val=0: use a whole number of 1 or more"),
        (  # it failed inside numpy ("need at least one array to stack")
            ["dataset=synthetic_clinical", "dataset.num_test=0"],
            "dataset.num_test=0: use a whole number of 1 or more",
        ),
        (
            ["scheduler=plateau", "scheduler.patience=-3"],
            "scheduler.patience=-3: must be a whole number >= 0",
        ),
        (  # albumentations' own (pydantic) check, on one line with the key as written
            ["augmentation.train.transforms.0.p=2"],
            "augmentation.train.transforms.0.p=2: Input should be less than or equal to 1 "
            "(HorizontalFlip)",
        ),
    ],
)
def test_a_value_of_the_wrong_type_or_size_is_named_by_its_key(tmp_path, overrides, message):
    """Instead of what the class said of it deep inside (OpenCV's assertion, numpy's "need at least
    one array to stack", "'<' not supported between instances of 'str' and 'int'")."""
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, [*TINY, *overrides])
    assert str(err.value).startswith(message), err.value  # then what the class said, in brackets


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (  # a loss for one output per image, on a two-class output: once a traceback mid-epoch
            ["~loss", "+loss._target_=torch.nn.BCEWithLogitsLoss"],
            "loss._target_=torch.nn.modules.loss.BCEWithLogitsLoss cannot take the model's "
            "output (2, 2) and the batch's targets "
            "{'label': (2,)}: Target size (torch.Size([2])) must be the same as input size",
        ),
        (
            ["~loss", "+loss._target_=torch.nn.CrossEntropyLoss", "+loss.reduction=none"],
            "loss._target_=torch.nn.modules.loss.CrossEntropyLoss returns (2,) for a batch of 2, "
            "not one number: a loss must reduce",
        ),
    ],
)
def test_a_loss_that_cannot_train_the_model_is_refused_before_training(
    tmp_path, overrides, message
):
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, [*TINY, *overrides])
    assert str(err.value).startswith(message), err.value
    assert not (tmp_path / "checkpoints").exists()  # refused before the first epoch


def test_a_model_of_other_channels_or_outputs_is_told_the_key(tmp_path):
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path / "a", [*TINY, "model.in_channels=3"])
    assert str(err.value).endswith(
        "(the images have 1 channel(s) and the model's first convolution takes 3: set the "
        "model's in_channels to ${dataset.in_channels}: model.in_channels for medtrain's image "
        "models)"
    )
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path / "b", [*TINY, "model.num_classes=3"])
    assert "outputs (2, 3); task=classification needs (batch, 2), one output per class: " in str(
        err.value
    ) and "model.num_classes=2" in str(err.value)


def test_a_fusion_branch_of_other_width_is_told_the_key(tmp_path):
    from tests.conftest import train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(
            tmp_path, ["experiment=synthetic_fusion", "model.branches.tabular.num_features=3"]
        )
    assert str(err.value).endswith(
        "(the tabular columns encode to 4 features, which no linear layer takes: set the tabular "
        "branch's num_features to ${dataset.num_features}: model.branches.tabular.num_features "
        "for model=fusion)"
    )


def test_a_regression_loss_of_your_own_is_not_refused(tmp_path, monkeypatch):
    # Before, every loss outside mse, l1, huber and smooth L1 was refused for regression; torch's
    # losses of class scores still are (they do not fail on one batch: they train nothing).
    from tests.conftest import FINISHED_RUNS, read_metrics, train_in_process

    (tmp_path / "my_losses.py").write_text(
        "import torch\n\n\nclass LogCosh(torch.nn.Module):\n"
        "    def forward(self, output, target):\n"
        "        return torch.log(torch.cosh(output - target)).mean()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    regression = [*FINISHED_RUNS["regression"], "trainer.max_epochs=1", "trainer.report=false"]
    train_in_process(tmp_path / "run", [*regression, "~loss", "+loss._target_=my_losses.LogCosh"])
    assert "test/mae" in read_metrics(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"does not compare values; for task=regression use"):
        train_in_process(
            tmp_path / "ce", [*regression, "~loss", "+loss._target_=torch.nn.CrossEntropyLoss"]
        )


def test_a_swapped_target_names_only_the_keys_that_can_be_removed(tmp_path):
    # cross_entropy's class_weights is null: Hydra cannot delete a null key ('~loss.class_weights'
    # fails with "does not exist"), and a null key sets nothing: it is dropped, not named.
    from tests.conftest import TINY, train_in_process

    swapped = [*TINY, "loss._target_=torch.nn.MultiMarginLoss"]
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path / "a", swapped)
    assert str(err.value).endswith(
        "It does not take loss.label_smoothing: remove it with '~loss.label_smoothing'"
    )
    train_in_process(tmp_path / "b", [*swapped, "~loss.label_smoothing"])
    assert (tmp_path / "b" / "metrics.json").is_file()


def test_a_dataset_swapped_under_an_experiment_names_the_keys_it_does_not_take(tmp_path):
    """dsb2018_nuclei sets seg_folder's val_size and test_size; seg_manifest takes fractions
    (its **kwargs go to its base classes, whose parameters are read too)."""
    from medtrain.engine.build import build_datasets
    from tests.conftest import compose_cfg
    from tests.data.test_preprocessing import write_pairs

    csv_path = write_pairs(tmp_path)
    cfg = compose_cfg(
        ["experiment=dsb2018_nuclei", "dataset=seg_manifest", f"dataset.path={csv_path}"]
    )
    with pytest.raises(ConfigError) as err:
        build_datasets(cfg)
    assert str(err.value).endswith(
        "It does not take dataset.val_size, dataset.test_size: remove them with "
        "'~dataset.val_size' '~dataset.test_size'"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "medtrain.models.cnn.SimpleCN",
            "medtrain.models.cnn has no 'SimpleCN' (closest: SimpleCNN)",
        ),
        ("medtrain.models.cnnx.SimpleCNN", "medtrain.models has no 'cnnx' (closest: cnn, nn)"),
        ("my_nets.Net", "no module 'my_nets' (your own code: on PYTHONPATH, or installed"),
        ("my_broken_nets.Net", "importing my_broken_nets failed: No module named 'not_installed'"),
        ("my_raising_nets.Net", "importing my_raising_nets failed: RuntimeError: no GPU here"),
    ],
)
def test_a_target_that_names_nothing_says_why(tmp_path, monkeypatch, target, message):
    # Hydra said "No module named 'medtrain.models.cnn.SimpleCN'; 'medtrain.models.cnn' is not a
    # package", twice, for a misspelt class.
    from medtrain.engine.build import build

    (tmp_path / "my_broken_nets.py").write_text("import not_installed\n")
    (tmp_path / "my_raising_nets.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build(compose_cfg([f"model._target_={target}"]).model, "model")
    assert str(err.value).startswith(f"model._target_={target}: {message}"), err.value


def test_wrong_types_reads_annotations_and_defaults():
    from medtrain.engine.build import wrong_types

    def target(a: float, b: int | None = None, c: bool = True, d=0.5, e: list[int] = (), f=None):
        return None

    values = {"a": "x", "b": None, "c": 1, "d": [1], "e": 3, "f": "anything", "g": "unknown"}
    assert wrong_types(target, values, "k") == [
        "k.a='x': must be a number",
        "k.c=1: must be true or false",
        "k.d=[1]: must be a number",
        "k.e=3: must be a list of whole numbers",
    ]
    assert wrong_types(target, {"a": 2, "b": 3, "c": False, "d": 1, "e": [1]}, "k") == []
    assert wrong_types(target, {"b": 2.5}, "k") == ["k.b=2.5: must be a whole number"]
    # A list's items by the annotation's item type (torch said "must be tuple of ints, not str").
    assert wrong_types(target, {"e": [8, "a"]}, "k") == [
        "k.e=[8, 'a']: must be a list of whole numbers"
    ]
    assert wrong_types(target, {"e": [8.0, 16]}, "k") == [  # torch takes no 8.0 for a size
        "k.e=[8.0, 16]: must be a list of whole numbers"
    ]
    assert wrong_types(target, {"e": [True]}, "k") == [
        "k.e=[True]: must be a list of whole numbers"
    ]


def test_seed_path_and_class_count_values_are_checked(tmp_path):
    from medtrain.data.synthetic import SyntheticLesions

    with pytest.raises(ConfigError, match="seed=-1: must be an integer >= 0"):
        validate(compose_cfg(["seed=-1"]))
    with pytest.raises(
        ConfigError, match="dataset=synthetic generates its images and reads no files"
    ):
        SyntheticLesions("train", path=str(tmp_path))
    with pytest.raises(ConfigError, match="dataset.num_classes=1: classification needs at least 2"):
        SyntheticLesions("train", num_classes=1)


@pytest.mark.parametrize(
    ("transforms", "where", "sizes"),
    [
        (
            "[{_target_: albumentations.RandomCrop, height: 64, width: 64}]",
            "augmentation.train.transforms.0 (RandomCrop)",
            "64 x 64",
        ),
        (
            "[{_target_: albumentations.HorizontalFlip}, {_target_: albumentations.OneOf, "
            "p: 1.0, transforms: [{_target_: albumentations.CenterCrop, height: 20, width: 8}]}]",
            "augmentation.train.transforms.1.transforms.0 (CenterCrop)",
            "20 x 8",
        ),
    ],
)
def test_a_crop_larger_than_the_images_is_refused_at_the_first_sample(
    tmp_path, transforms, where, sizes
):
    """It was albumentations' CropSizeError traceback from inside the data loading."""
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:  # TINY's images are 16 x 16
        train_in_process(tmp_path, [*TINY, f"augmentation.train.transforms={transforms}"])
    assert str(err.value) == (
        f"{where} crops {sizes} pixels (height x width) out of an image of 16 x 16: make the "
        "crop at most the image size (after dataset.image_size and the transforms before it), or "
        "let it pad (pad_if_needed: true, or an albumentations.PadIfNeeded before it)"
    )
    assert not (tmp_path / "checkpoints").exists()  # refused before the first epoch


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (  # albumentations warned and rotated by its default 90 degrees; the config said 20
            "[{_target_: albumentations.HorizontalFlip}, {_target_: albumentations.Rotate, "
            "limitt: 20}]",
            "augmentation.train.transforms.1.limitt: Rotate takes no argument 'limitt' (did you "
            "mean limit?); it takes border_mode, crop_border, fill, fill_mask, interpolation, "
            "limit, mask_interpolation, p, rotate_method",
        ),
        (  # it was "No module named 'albumentations.HorizontalFlipp'", without the key
            "[{_target_: albumentations.OneOf, transforms: [{_target_: "
            "albumentations.HorizontalFlipp}]}]",
            "augmentation.train.transforms.0.transforms.0._target_=albumentations.HorizontalFlipp"
            ": albumentations has no 'HorizontalFlipp' (closest: HorizontalFlip",
        ),
    ],
)
def test_a_transform_s_misspelt_name_or_argument_is_refused_naming_its_key(
    tmp_path, transforms, message
):
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, [*TINY, f"augmentation.train.transforms={transforms}"])
    assert str(err.value).startswith(message)


def test_a_transform_that_cannot_be_applied_names_its_key_not_an_opencv_traceback(tmp_path):
    """A linear mask_interpolation stopped OpenCV's remap on the class mask with a cv2.error
    traceback (exit 1) and a half-written run."""
    from tests.conftest import train_in_process

    affine = "{_target_: albumentations.Affine, rotate: 10, mask_interpolation: 1, p: 1.0}"
    overrides = [
        "experiment=synthetic_segmentation",
        "dataset.num_train=4",
        "dataset.num_val=2",
        "dataset.num_test=2",
        "trainer.max_epochs=1",
        f"augmentation.train.transforms=[{affine}]",
    ]
    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, overrides)
    assert str(err.value).startswith(
        "augmentation.train.transforms.0 (Affine) cannot be applied to a sample (image "
    )
    assert "OpenCV: " in str(err.value) and str(err.value).endswith("check its arguments")
    assert not (tmp_path / "checkpoints").exists()


def test_a_loss_setting_torch_refuses_is_named_as_that_setting(tmp_path):
    """torch's "label_smoothing must be between 0.0 and 1.0" was said of the output's and the
    targets' shapes."""
    from tests.conftest import TINY, train_in_process

    with pytest.raises(ConfigError) as err:
        train_in_process(tmp_path, [*TINY, "loss.label_smoothing=1.5"])
    assert str(err.value).startswith(
        "loss.label_smoothing=1.5: label_smoothing must be between 0.0 and 1.0"
    )


def test_training_images_of_another_size_than_evaluation_s_are_warned_about(tmp_path, caplog):
    """A train-only RandomResizedCrop of 24 px with 32-px evaluation trained without a word."""
    import logging

    from medtrain.engine.build import build_datasets, build_task
    from medtrain.engine.config import other_sizes
    from tests.conftest import TINY, train_in_process

    crop = "{_target_: albumentations.RandomResizedCrop, size: [12, 12]}"
    cfg = compose_cfg([*TINY, f"augmentation.train.transforms=[{crop}]"])
    datasets = build_datasets(cfg)
    assert other_sizes(datasets, build_task(cfg)) == (
        "training images are 12 x 12 after augmentation.train, and 16 x 16 as evaluated: the "
        "network is trained at one scale and tested at another; give augmentation.eval the same "
        "final size (e.g. a CenterCrop or Resize), or crop in training to the image size"
    )
    assert tuple(datasets["train"][0]["image"].shape) == (1, 12, 12)  # its pipeline put back
    plain = compose_cfg(TINY)
    assert other_sizes(build_datasets(plain), build_task(plain)) is None
    with caplog.at_level(logging.WARNING, logger="medtrain.engine.training"):
        train_in_process(tmp_path, [*TINY, f"augmentation.train.transforms=[{crop}]"])
    assert "training images are 12 x 12 after augmentation.train" in caplog.text
