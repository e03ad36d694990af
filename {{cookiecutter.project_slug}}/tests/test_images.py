"""The data layer on competitions it was not written for: ids with extensions, tags or 0/1 columns, odd column
names, numeric classes, grayscale/RGB, PNG/JPEG - and one clear error for each kind of bad input."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }} import config
from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.data import cache, decode, images, tables


def cfg_for(tmp_path, yaml: str) -> config.Config:
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  dir: {tmp_path}\n" + yaml)
    return config.load(path)


def write(tmp_path, df: pd.DataFrame, name: str = "train.csv") -> None:
    df.to_csv(tmp_path / name, index=False)


def test_numeric_classes_sort_as_numbers(tmp_path):
    write(tmp_path, pd.DataFrame({"id": list("abcd"), "label": [10, 2, 2, 1]}))
    cfg = cfg_for(tmp_path, "")
    train = tables.read_train(cfg)
    classes = tables.derive_classes(cfg, train)
    assert classes == ["1", "2", "10"]
    np.testing.assert_array_equal(tables.encode_targets(cfg, train, classes), [2, 1, 1, 0])


def test_binary_string_labels_positive_is_the_larger(tmp_path):
    write(tmp_path, pd.DataFrame({"image_name": ["x", "y", "z"], "Target": ["no", "yes", "no"]}))
    cfg = cfg_for(tmp_path, "  id_col: image_name\n  target_col: Target\ntask: binary\n")
    train = tables.read_train(cfg)
    assert tables.binary_positive(cfg, train) == "yes"
    np.testing.assert_array_equal(tables.encode_targets(cfg, train, ["Target"]), [0, 1, 0])


def test_multilabel_tags_and_zero_one_columns_agree(tmp_path):
    tags = pd.DataFrame({"id": ["a", "b", "c"], "tags": ["cat dog", "dog", "bird cat"]})
    write(tmp_path, tags)
    cfg = cfg_for(tmp_path, "  target_col: tags\ntask: multilabel\n")
    classes = tables.derive_classes(cfg, tables.read_train(cfg))
    y_tags = tables.encode_targets(cfg, tables.read_train(cfg), classes)
    assert classes == ["bird", "cat", "dog"]
    onehot = pd.DataFrame({"id": ["a", "b", "c"], **{c: y_tags[:, i].astype(int) for i, c in enumerate(classes)}})
    write(tmp_path, onehot)
    cfg2 = cfg_for(tmp_path, "  target_col: [bird, cat, dog]\ntask: multilabel\n")
    y_cols = tables.encode_targets(cfg2, tables.read_train(cfg2), tables.derive_classes(cfg2, tables.read_train(cfg2)))
    np.testing.assert_array_equal(y_tags, y_cols)
    # A custom separator.
    write(tmp_path, pd.DataFrame({"id": ["a"], "tags": ["cat|dog"]}))
    cfg3 = cfg_for(tmp_path, "  target_col: tags\n  label_sep: '|'\ntask: multilabel\n")
    assert tables.derive_classes(cfg3, tables.read_train(cfg3)) == ["cat", "dog"]


@pytest.mark.parametrize(
    ("table", "yaml", "message"),
    [
        (pd.DataFrame({"id": ["a", "a"], "label": [1, 2]}), "", r"duplicate ids in column 'id'"),
        (pd.DataFrame({"id": ["a", "b"], "label": [1, None]}), "", r"column 'label' has 1 empty/NaN"),
        (pd.DataFrame({"id": ["a", "b"], "y": [1, 2]}), "", r"column\(s\) \['label'\] not found"),
        (
            pd.DataFrame({"id": ["a", "b"], "label": ["x", "1.5"]}),
            "task: regression\n",
            r"row 2 holds .x.; task=regression needs finite",
        ),
        (pd.DataFrame({"id": list("abc"), "label": [1, 2, 3]}), "task: binary\n", r"task=binary expects 2"),
    ],
)
def test_bad_tables_fail_with_one_line_naming_file_and_column(tmp_path, table, yaml, message):
    write(tmp_path, table)
    cfg = cfg_for(tmp_path, yaml)
    with pytest.raises(UserError, match=message) as err:
        train = tables.read_train(cfg)
        tables.encode_targets(cfg, train, tables.derive_classes(cfg, train))
    assert "\n" not in str(err.value)
    assert "train.csv" in str(err.value) or "column" in str(err.value)


def test_unknown_class_in_a_later_table_is_named(tmp_path):
    write(tmp_path, pd.DataFrame({"id": ["a", "b"], "label": ["cat", "dog"]}))
    cfg = cfg_for(tmp_path, "")
    with pytest.raises(UserError, match=r"labels \['cow'\] not among the classes"):
        tables.encode_targets(cfg, pd.DataFrame({"id": ["c"], "label": ["cow"]}), ["cat", "dog"])


def test_image_path_keeps_an_existing_extension(tmp_path):
    assert decode.image_path(tmp_path, "a", ".png").name == "a.png"
    assert decode.image_path(tmp_path, "a.JPG", ".png").name == "a.JPG"
    assert decode.image_path(tmp_path, "scan.v2", ".png").name == "scan.v2.png"  # '.v2' is not an image extension


def test_missing_images_counted_and_listed(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "img" / "a.png")
    img = tmp_path / "img"
    with pytest.raises(
        UserError,
        match=re.escape(f"2 of 3 images not found, first: ['{img}/b.png', '{img}/sub/c.png'] (check data.train_images"),
    ):
        decode.image_paths(img, ["a", "b", "sub/c"], ".png", "train_images")  # the full paths tried, folders shown
    with pytest.raises(UserError, match="image folder not found"):
        decode.image_paths(tmp_path / "nope", ["a"], ".png", "train_images")


FILE_MODES = [("png", m) for m in ("L", "RGB", "RGBA", "P", "I;16")] + [("jpeg", m) for m in ("L", "RGB")]


@pytest.mark.parametrize(("fmt", "mode"), FILE_MODES)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_any_image_mode_reads_as_hwc_uint8(tmp_path, mode, fmt, in_chans):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 200)
    path = tmp_path / f"x.{fmt}"
    img.save(path)
    out = decode.read_image(path, in_chans)
    assert out.shape == (6, 5, in_chans) and out.dtype == np.uint8


def test_dataset_items_and_cache_agree(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((4, 4), i * 50, np.uint8)).save(tmp_path / f"{i}.png")
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    y = np.array([0, 1, 2])
    plain = images.ImageDataset(paths, y, None, in_chans=1, extras={"w": np.array([0.5, 1.0, 2.0])})
    cached = images.ImageDataset(paths, y, None, in_chans=1, cache=cache.open_cache("memory", paths, 1, None))
    item = plain[2]
    assert item["image"].shape == (4, 4, 1) and item["image"].dtype == torch.uint8 and int(item["image"].max()) == 100
    assert int(item["target"]) == 2 and float(item["w"]) == 2.0 and item["index"] == 2
    assert (cached[1]["image"] == plain[1]["image"]).all()
