"""The typed preprocessing record: built by the kinds, saved as a plain dict, old dicts read back."""

from __future__ import annotations

import io

import pytest
import torch

from visionlab.data.preprocessing import Preprocessing

#: What the kinds saved before the record existed (a classifier's and a segmentation model's),
#: and a segmentation record older still (no resize, no tta keys).
CLASSIFIER = {"kind": "classification", "image_size": 96, "resize": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
              "background_removal": True, "tta": "hflip"}
SEGMENTER = {"kind": "segmentation", "resize": "scale", "image_size": 256, "tile_size": 256, "tile_overlap": 0.25, "seg_scale": 0.75,
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "values": [0, 1, 2], "colors": [[255, 0, 0], None, [0, 0, 255]],
             "ignore_index": 255, "ignored_values": [2], "tta": "none"}
OLD_SEGMENTER = {k: v for k, v in SEGMENTER.items() if k not in ("resize", "tta")}


@pytest.mark.parametrize("saved", [CLASSIFIER, SEGMENTER, OLD_SEGMENTER], ids=["classifier", "segmenter", "old-segmenter"])
def test_a_saved_dict_round_trips_unchanged_and_loads_with_weights_only(saved: dict):
    pre = Preprocessing.from_dict(saved)
    assert pre.to_dict() == saved and dict(pre) == saved and pre["image_size"] == saved["image_size"]
    buf = io.BytesIO()
    torch.save({"preprocessing": pre.to_dict()}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["preprocessing"] == saved


def test_typed_fields_and_their_defaults_for_old_records():
    old = Preprocessing.from_dict(OLD_SEGMENTER)
    assert old.tta_mode == "none" and old.resize is None and old.scale == 0.75 and old.values == (0, 1, 2)
    cls = Preprocessing.from_dict(CLASSIFIER)
    assert cls.mean == (0.5, 0.5, 0.5) and cls.scale == 1.0 and cls.tile_size is None and cls.background_removal is True
    assert cls.replace(tta="d4").tta_mode == "d4" and cls.tta_mode == "hflip"  # frozen: replace makes another
    with pytest.raises(AttributeError):
        cls.tta = "none"  # type: ignore[misc]


def test_a_plugin_kinds_own_keys_are_kept():
    saved = {**CLASSIFIER, "kind": "regression", "target_range": [0.0, 1.0]}
    assert Preprocessing.from_dict(saved).to_dict() == saved


def test_the_kinds_build_it_from_the_config():
    from visionlab.api import load_config
    from visionlab.kinds.classification.runner import classification_preprocessing

    pre = classification_preprocessing(load_config("minerals", overrides=["tta=hflip"]))
    assert isinstance(pre, Preprocessing) and pre.kind == "classification" and pre.resize == "squash" and pre.tta == "hflip"
    assert pre.to_dict().keys() == CLASSIFIER.keys()
