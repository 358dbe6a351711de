"""read_labels: image ids must be whole numbers; anything else is an error, never a silent cast."""

from __future__ import annotations

import pandas as pd
import pytest

from neuronscan.concepts import read_labels
from neuronscan.errors import InputError


@pytest.mark.parametrize("ids, shown", [(["img_0", "1"], "'img_0'"), ([0.5, 1.0], "0.5"), ([1.0, float("inf")], "inf")])
def test_ids_that_are_not_whole_numbers_are_refused(tmp_path, ids, shown):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"image_id": ids, "concept": ["a", "b"]}).to_parquet(path)
    with pytest.raises(InputError, match=rf"image_id must be whole numbers.*1 row\(s\) are not, e\.g\. {shown}"):
        read_labels(str(path))


@pytest.mark.parametrize("ids", [[3, 7], [3.0, 7.0], ["3", "7"]])
def test_whole_number_ids_are_read_as_int64(tmp_path, ids):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"image_id": ids, "concept": ["a", "b"]}).to_parquet(path)
    out = read_labels(str(path))
    assert out["image_id"].tolist() == [3, 7] and str(out["image_id"].dtype) == "int64"
