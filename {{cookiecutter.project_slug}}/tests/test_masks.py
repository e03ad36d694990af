"""Segmentation masks: Kaggle's RLE both ways (by hand and at random), every malformed RLE refused by name, the table
formats (long, wide, single RLE column, PNG index and per-class masks) read as the same masks, class names kept as
written, area fractions without decoding, and the segmentation demo's masks lying on its digits."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.core.schema import DataConfig
from {{ cookiecutter.package_name }}.data import demo, masks

# --- RLE ----------------------------------------------------------------------------------------------------------

# A 3 x 4 mask (height 3, width 4). Pixel numbers, 1-indexed:
#            F (down each column)        C (along each row)
#   1 0 1 1     1  4  7 10                 1  2  3  4
#   1 0 0 1     2  5  8 11                 5  6  7  8
#   0 1 1 1     3  6  9 12                 9 10 11 12
# F: pixels 1-2, 6-7, 9-12 -> "1 2 6 2 9 4";  C: 1, 3-5, 8, 10-12 -> "1 1 3 3 8 1 10 3"
HAND = np.array([[1, 0, 1, 1], [1, 0, 0, 1], [0, 1, 1, 1]], np.uint8)
HAND_RLE = {"F": "1 2 6 2 9 4", "C": "1 1 3 3 8 1 10 3"}


@pytest.mark.parametrize("order", ["F", "C"])
def test_hand_checked_example(order):
    assert masks.rle_encode(HAND, order) == HAND_RLE[order]
    decoded = masks.rle_decode(HAND_RLE[order], HAND.shape, order)
    assert decoded.dtype == np.uint8 and decoded.shape == (3, 4)
    np.testing.assert_array_equal(decoded, HAND)


@pytest.mark.parametrize("order", ["F", "C"])
def test_round_trip_random_masks(order):
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(s) for s in rng.integers(1, 12, 2))
        mask = (rng.random(shape) < rng.random()).astype(np.uint8)
        rle = masks.rle_encode(mask.astype(bool) if rng.random() < 0.5 else mask, order)
        masks.check_rle(rle, shape, "random")
        np.testing.assert_array_equal(masks.rle_decode(rle, shape, order), mask)
        assert masks.rle_area(rle, shape) == mask.sum()


def test_empty_mask_is_the_empty_string():
    assert masks.rle_encode(np.zeros((4, 5), np.uint8)) == ""
    for empty in ("", "  ", float("nan"), None):
        out = masks.rle_decode(empty, (4, 5))
        assert out.shape == (4, 5) and not out.any()
    assert masks.rle_encode(np.ones((2, 3), bool)) == "1 6"


@pytest.mark.parametrize(
    "rle, expected",
    [
        ("1 2 x 3", "'x'; expected integers"),
        ("1.5 2", "'1.5'; expected integers"),
        ("1 2 5", "odd count"),
        ("0 2", "starts at 0; starts are 1-indexed"),
        ("-3 2", "starts at -3"),
        ("4 0", "length 0"),
        ("5 1 3 1", "not after run 1's start 5"),
        ("5 1 5 1", "not after run 1's start 5"),
        ("1 3 2 1", "inside run 1 (pixels 1..3)"),
        ("11 3", "run 1 (pixels 11..13) ends beyond the image's 12 pixels"),
        ("13 1", "ends beyond"),
    ],
)
def test_check_rle_refuses_naming_where(rle, expected):
    where = "submissions/x.csv row 12 (id abc, class 2)"
    with pytest.raises(UserError) as e:
        masks.check_rle(rle, (3, 4), where)
    msg = str(e.value)
    assert msg.startswith(where + ": ") and expected in msg and "\n" not in msg
    with pytest.raises(UserError, match="row 12"):  # decoding checks alike: a bad RLE never draws a wrong mask
        masks.rle_decode(rle, (3, 4), where=where)


def test_check_rle_accepts_touching_runs_and_the_last_pixel():
    masks.check_rle("1 1 2 1 12 1", (3, 4), "x")
    np.testing.assert_array_equal(masks.rle_decode("1 1 2 1", (1, 3)), [[1, 1, 0]])


def test_a_bad_order_is_refused():
    with pytest.raises(UserError, match="rle_order='R'"):
        masks.rle_encode(HAND, "R")


# --- the training masks in every format ----------------------------------------------------------------------------

H, W = 5, 7  # not square: a transposed mask would not even fit
IDS = ["a", "b", "c", "d"]
CLASSES = ["1", "2"]


def truth() -> np.ndarray:
    """(N, H, W, C) masks: a has both classes, b only class 2, c none, d only class 1."""
    rng = np.random.default_rng(1)
    m = (rng.random((len(IDS), H, W, len(CLASSES))) < 0.4).astype(np.uint8)
    m[1, ..., 0] = 0
    m[2] = 0
    m[3, ..., 1] = 0
    return m


def cfg_of(tmp_path, **data) -> SimpleNamespace:
    """What the mask readers use of a config: its data section."""
    return SimpleNamespace(data=DataConfig(dir=str(tmp_path), **data))


def read_all(source) -> np.ndarray:
    return np.stack([source.read(i, (H, W)) for i in range(len(source))])


def long_table(m: np.ndarray, order: str = "F") -> pd.DataFrame:
    """Severstal's layout: a row per (image, class) with a mask, an empty row for an image with none, rows of one
    image not together, an extra column that stays with the image."""
    rows = [(i, c, masks.rle_encode(m[k, ..., j], order)) for k, i in enumerate(IDS) for j, c in enumerate(CLASSES)]
    rows = [r for r in rows if r[2]] + [("c", "", "")]
    df = pd.DataFrame(rows, columns=["id", "ClassId", "EncodedPixels"]).iloc[::-1].reset_index(drop=True)
    return df.assign(site=df["id"].map({"a": "x", "b": "x", "c": "y", "d": "y"}))


def write_png(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8)).save(path)


@pytest.mark.parametrize("order", ["F", "C"])
def test_long_format(tmp_path, order):
    m = truth()
    df = long_table(m, order)
    cfg = cfg_of(tmp_path, class_col="ClassId", rle_order=order)
    table = masks.image_table(cfg, df)
    source = masks.mask_source(cfg, df)
    assert list(table["id"]) == source.ids == ["c", "d", "b", "a"]  # unique ids, first seen first
    assert list(table.columns) == ["id", "site"]
    assert source.classes == CLASSES
    np.testing.assert_array_equal(read_all(source), m[[2, 3, 1, 0]])


def test_the_formats_read_the_same_masks(tmp_path):
    m = truth()
    df_long = long_table(m).set_index("id").loc[IDS].reset_index()  # images in IDS order, rows per class inside
    wide = pd.DataFrame({"id": IDS, **{c: [masks.rle_encode(x) for x in m[..., j]] for j, c in enumerate(CLASSES)}})
    (tmp_path / "index").mkdir()
    (tmp_path / "per_class").mkdir()
    for k, i in enumerate(IDS):
        for j, c in enumerate(CLASSES):
            write_png(tmp_path / "per_class" / f"{i}_{c}.png", m[k, ..., j] * 255)
    # index masks hold one class per pixel: a's class-2 pixels win where both are set, as in the truth compared below
    exclusive = m.copy()
    exclusive[..., 0] &= 1 - exclusive[..., 1]
    for k, i in enumerate(IDS):
        write_png(tmp_path / "index" / f"{i}.png", exclusive[k, ..., 0] * 1 + exclusive[k, ..., 1] * 2)
    ids = pd.DataFrame({"id": [f"{i}.jpg" for i in IDS]})  # an id naming its image file: masks drop the extension

    sources = {
        "long": masks.mask_source(cfg_of(tmp_path, class_col="ClassId"), df_long),
        "wide": masks.mask_source(cfg_of(tmp_path, rle_col=CLASSES), wide),
        "per_class": masks.mask_source(cfg_of(tmp_path, train_masks="per_class"), ids),
        "index": masks.mask_source(cfg_of(tmp_path, train_masks="index"), ids),
        "index_multiclass": masks.mask_source(cfg_of(tmp_path, train_masks="index", mask_mode="multiclass"), ids),
    }
    for name, source in sources.items():
        assert source.classes == CLASSES, name
        expected = exclusive if name.startswith("index") else m
        np.testing.assert_array_equal(read_all(source), expected, err_msg=name)
    one_hot = read_all(sources["index_multiclass"])
    assert one_hot.sum(-1).max() == 1

    single = masks.mask_source(cfg_of(tmp_path), wide.rename(columns={"2": "EncodedPixels"}))
    assert single.classes == ["EncodedPixels"]
    np.testing.assert_array_equal(read_all(single), m[..., 1:])
    named = masks.mask_source(cfg_of(tmp_path, mask_classes=["ship"]), wide.rename(columns={"2": "EncodedPixels"}))
    assert named.classes == ["ship"]


def test_png_binary_masks_are_one_class(tmp_path):
    m = truth()[..., 0]
    for scale, folder in ((255, "m255"), (1, "m1")):
        (tmp_path / folder).mkdir()
        for k, i in enumerate(IDS):
            write_png(tmp_path / folder / f"{i}.png", m[k] * scale)
        source = masks.mask_source(cfg_of(tmp_path, train_masks=folder), pd.DataFrame({"id": IDS}))
        assert source.classes == ["1"]
        np.testing.assert_array_equal(read_all(source)[..., 0], m)


def test_several_rows_of_one_class_are_united(tmp_path):
    """Airbus ships one row per instance, no class column: the image's mask is their union."""
    a, b = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    a[0:2, 0:2], b[3:5, 4:7] = 1, 1
    df = pd.DataFrame({"ImageId": ["x", "x", "y"], "EncodedPixels": [masks.rle_encode(a), masks.rle_encode(b), ""]})
    cfg = cfg_of(tmp_path, id_col="ImageId")
    source = masks.mask_source(cfg, df)
    assert source.ids == ["x", "y"] and len(masks.image_table(cfg, df)) == 2
    np.testing.assert_array_equal(source.read(0, (H, W))[..., 0], a | b)
    assert not source.read(1, (H, W)).any()


def test_classes_keep_their_text_and_order(tmp_path):
    mask = masks.rle_encode(np.eye(H, W, dtype=np.uint8))
    df = pd.DataFrame({"id": ["a", "a", "b", "c"], "ClassId": ["10", "02", "01", "02"], "EncodedPixels": mask})
    cfg = cfg_of(tmp_path, class_col="ClassId")
    assert masks.mask_source(cfg, df).classes == ["01", "02", "10"]  # numerically, zero padding kept
    text = df.assign(ClassId=["b", "a10", "a2", "a2"])
    assert masks.mask_source(cfg, text).classes == ["a10", "a2", "b"]

    listed = masks.mask_source(cfg_of(tmp_path, class_col="ClassId", mask_classes=["10", "02", "01", "99"]), df)
    assert listed.classes == ["10", "02", "01", "99"]  # data.mask_classes' order; 99 is never seen: empty
    assert not listed.read(0, (H, W))[..., 3].any() and listed.read(0, (H, W))[..., 0].any()
    with pytest.raises(UserError, match=r"column 'ClassId' holds the class '10', which data.mask_classes"):
        masks.mask_source(cfg_of(tmp_path, class_col="ClassId", mask_classes=["01", "02"]), df)


def test_bad_tables_are_refused_by_name(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "ClassId": ["1", ""], "EncodedPixels": ["1 2", "3 1"]})
    with pytest.raises(UserError, match=r"column 'ClassId' \(data.class_col\) is empty at row 3"):
        masks.mask_source(cfg_of(tmp_path, class_col="ClassId"), df)
    with pytest.raises(UserError, match=r"mask column\(s\) \['Mask'\] not found"):
        masks.mask_source(cfg_of(tmp_path, rle_col="Mask"), df)
    source = masks.mask_source(cfg_of(tmp_path, class_col="ClassId"), df.assign(ClassId="1", EncodedPixels="3 99"))
    with pytest.raises(UserError, match=r"^train.csv row 2 \(id a, class 1\): RLE run 1 \(pixels 3..101\) ends"):
        source.read(0, (H, W))
    with pytest.raises(UserError, match="mask folder not found"):
        masks.mask_source(cfg_of(tmp_path, train_masks="nowhere"), df)


def test_png_mask_of_another_size_is_refused(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((H, W)))
    source = masks.mask_source(cfg_of(tmp_path, train_masks="."), pd.DataFrame({"id": ["a"]}))
    with pytest.raises(UserError, match=rf"a.png: mask is {W}x{H} pixels but its image is {W + 1}x{H} \(width x"):
        source.read(0, (H, W + 1))


def test_png_index_mask_beyond_the_classes_is_refused(tmp_path):
    write_png(tmp_path / "a.png", np.full((H, W), 3))
    source = masks.mask_source(cfg_of(tmp_path, train_masks=".", mask_classes=["x", "y"]), pd.DataFrame({"id": ["a"]}))
    with pytest.raises(UserError, match=r"a\.png: pixel value 3 but 2 classes"):
        source.read(0, (H, W))


def test_area_fractions_are_the_masks_means(tmp_path):
    m = truth()
    rng = np.random.default_rng(2)
    shapes = [(H, W), (W, H), (3, 9), (H, W)]  # each image its own size: areas are fractions of each
    ms = [(rng.random((*s, 2)) < p).astype(np.uint8) for s, p in zip(shapes, (0.1, 0.5, 0.0, 0.9), strict=True)]
    df = pd.DataFrame({"id": IDS, **{c: [masks.rle_encode(x[..., j]) for x in ms] for j, c in enumerate(CLASSES)}})
    fractions = masks.area_fractions(masks.mask_source(cfg_of(tmp_path, rle_col=CLASSES), df), shapes)
    assert fractions.dtype == np.float32 and fractions.shape == (4, 2)
    np.testing.assert_allclose(fractions, [x.mean((0, 1)) for x in ms], rtol=1e-6)

    for k, i in enumerate(IDS):
        write_png(tmp_path / f"{i}.png", m[k, ..., 0] + 2 * m[k, ..., 1] * (1 - m[k, ..., 0]))
    source = masks.mask_source(cfg_of(tmp_path, train_masks="."), pd.DataFrame({"id": IDS}))
    np.testing.assert_allclose(masks.area_fractions(source, [(H, W)] * 4), read_all(source).mean((1, 2)), rtol=1e-6)


# --- the segmentation demo ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg_demo(tmp_path_factory):
    return demo.write_demo(tmp_path_factory.mktemp("seg") / "data", "segmentation")


def test_demo_masks_lie_on_the_digits(seg_demo):
    train = pd.read_csv(seg_demo / "train.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["id", "ClassId", "EncodedPixels"]
    cfg = cfg_of(seg_demo, class_col="ClassId")
    table = masks.image_table(cfg, train)
    source = masks.mask_source(cfg, train)
    assert len(table) == demo.SEG_TRAIN and source.classes == ["1", "2", "3"]
    assert (train.groupby("id").size() == 3).all()  # a row per image and class, empty where no mask
    seen = np.zeros(3, bool)
    for i in range(0, len(source), 7):
        img = np.asarray(Image.open(seg_demo / "train" / f"{source.ids[i]}.png"))
        assert img.shape == (demo.SEG_SIZE, demo.SEG_SIZE)
        m = source.read(i, img.shape).any(-1)
        assert m.any()  # every canvas holds a digit
        assert img[m].min() >= demo.MASK_LEVEL and img[~m].mean() < demo.MASK_LEVEL - 40
        seen |= source.read(i, img.shape).any((0, 1)).astype(bool)
    assert seen.all()
    fractions = masks.area_fractions(source, [(demo.SEG_SIZE, demo.SEG_SIZE)] * len(source))
    assert 0.01 < fractions.mean() < 0.2


def test_demo_submission_lists_every_test_image_and_class(seg_demo):
    test = pd.read_csv(seg_demo / "test.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(seg_demo / "sample_submission.csv", dtype=str, keep_default_na=False)
    solution = pd.read_csv(seg_demo / "solution.csv", dtype=str, keep_default_na=False)
    assert len(test) == demo.SEG_TEST and test["id"].is_unique
    expected = {(i, c) for i in test["id"] for c in ("1", "2", "3")}
    assert set(zip(sample["id"], sample["ClassId"], strict=True)) == expected and len(sample) == len(expected)
    assert (sample["EncodedPixels"] == "").all()
    assert list(solution[["id", "ClassId"]].itertuples(index=False)) == list(
        sample[["id", "ClassId"]].itertuples(index=False)
    )
    assert (solution["EncodedPixels"] != "").any()
    assert not set(test["id"]) & set(pd.read_csv(seg_demo / "train.csv", dtype=str)["id"])
    for rle in solution["EncodedPixels"]:
        masks.check_rle(rle, (demo.SEG_SIZE, demo.SEG_SIZE), "solution.csv")
