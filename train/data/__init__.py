"""Dataset readers for the standard HyCon benchmark files, and the --demo generators."""

from .bundle import EMOTIONS, DataBundle, DataInfo, TensorDictDataset
from .demo import DEMO_FORMATS, DEMO_VOCAB, write_demo, write_demo_vocab
from .errors import DataError, DataFileNotFound
from .load import load_dataset
from .locate import FORMATS, NAMES

__all__ = [
    "EMOTIONS",
    "DEMO_FORMATS",
    "DEMO_VOCAB",
    "FORMATS",
    "NAMES",
    "DataBundle",
    "DataError",
    "DataFileNotFound",
    "DataInfo",
    "TensorDictDataset",
    "load_dataset",
    "write_demo",
    "write_demo_vocab",
]
