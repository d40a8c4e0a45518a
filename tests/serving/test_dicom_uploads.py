"""Compressed DICOM through the serving path: admission (header only), decoding with the
bundle's preprocessing, and a prediction, for a real file of every transfer syntax.

The bundle is a small seeded ResNet saved and loaded like a run's; the expected input is
what training's loader makes of the same file, the expected prediction that network on it.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate

from medfl.config import ModelConfig
from medfl.data.images import ImagePreprocessing, load_image
from medfl.models import build_model
from medfl.serving import ImageModel, load_bundle, save_bundle
from medfl.serving.admission import admit_images
from medfl.serving.tabular import InputError

SIZE = 32
BUDGET = 256 << 20  # bytes: room for a 1024 x 1024 image
FILES = [  # one real file per compressed syntax (pydicom's test data and pydicom-data)
    "JPGExtended.dcm",                  # JPEG extended (process 2 and 4), 12-bit
    "JPEG-LL.dcm",                      # JPEG lossless, process 14 SV1
    "MR_small_jpeg_ls_lossless.dcm",    # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",        # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",        # JPEG 2000 lossless
    "693_J2KI.dcm",                     # JPEG 2000 lossy, CT with a rescale
    "RG3_J2KI.dcm",                     # JPEG 2000 lossy, MONOCHROME1 radiograph
    "MR_small_RLE.dcm",                 # RLE lossless
]


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom-data is a test dependency)"
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> ImageModel:
    torch.manual_seed(0)
    arch = {"name": "resnet", "width": 8, "image_shape": [1, SIZE, SIZE], "n_outputs": 1}
    net = build_model(ModelConfig("resnet", 0, 8), image_shape=(1, SIZE, SIZE), n_outputs=1)
    prep = ImagePreprocessing(size=SIZE, intensity="minmax")
    manifest = {"architecture": arch, "input_schema": {}, "task": "image-classification",
                "preprocessing": {"image": prep.to_dict()}, "label_names": ["absent", "present"],
                "threshold": 0.5, "created": {}}
    directory = save_bundle(tmp_path_factory.mktemp("dicom-bundle"), net.state_dict(), manifest)
    return ImageModel.from_bundle(load_bundle(directory))


@pytest.mark.parametrize("name", FILES)
def test_a_compressed_dicom_upload_is_admitted_decoded_and_predicted(served, name):
    with open(_path(name), "rb") as f:
        data = f.read()
    admitted = admit_images([data], budget_bytes=BUDGET)
    x = served.preprocess(admitted)
    np.testing.assert_array_equal(x[0], load_image(_path(name), served.prep))  # as trained
    [prediction] = served.predict(admitted)
    with torch.no_grad():
        logit = served.model(torch.from_numpy(load_image(_path(name), served.prep))[None])
    p = float(torch.sigmoid(logit).reshape(()))
    assert prediction["probabilities"]["present"] == pytest.approx(p, abs=1e-6)
    assert prediction["label"] == ("present" if p >= 0.5 else "absent")


def test_an_undecodable_syntax_is_refused_at_admission_naming_it():
    ds = pydicom.dcmread(_path("MR_small.dcm"))
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pydicom decoder
    ds.PixelData = encapsulate([ds.PixelData])
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(InputError) as err:
        admit_images([buf.getvalue()], budget_bytes=BUDGET)
    message = str(err.value)
    assert message.startswith("files[0]: ")
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in message
    assert "corrupt" not in message
