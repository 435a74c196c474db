"""preprocessing_fn run by tf.Transform on Beam over a few hundred rows, as TFX's
Transform component would: TFXIO reads tf.Examples encoded like CsvExampleGen's."""
import os

import apache_beam as beam
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
from tfx_bsl.public import tfxio

from modules.transform import preprocessing_fn
from core import config
from core.examples import row_to_example, write_tfrecord
from tests.conftest import read_rows

ROWS = 400


@pytest.fixture(scope="session")
def transform_rows():
    return read_rows()[:ROWS]


@pytest.fixture(scope="session")
def transformed(tmp_path_factory, transform_rows):
    """(TFTransformOutput, list of transformed feature dicts as numpy)."""
    work = tmp_path_factory.mktemp("tft")
    raw_path = str(work / "raw.tfrecord")
    write_tfrecord((row_to_example(r) for r in transform_rows), raw_path)
    schema = tfdv.load_schema_text(config.load(environ={}).schema_path)
    source = tfxio.TFExampleRecord(file_pattern=raw_path, schema=schema)
    out_dir, data_prefix = str(work / "transform_output"), str(work / "transformed")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(work / "tmp")):
        raw = pipeline | source.BeamSource()
        (data, metadata), transform_fn = (
            (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn))

        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
        coder = tft.coders.ExampleProtoCoder(metadata.schema)
        _ = (data | beam.Map(coder.encode)
             | beam.io.WriteToTFRecord(data_prefix, file_name_suffix=".tfrecord", num_shards=1))
    # TFX's Transform also keeps the raw schema beside the transform graph.
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    output = tft.TFTransformOutput(out_dir)
    spec = output.transformed_feature_spec()
    files = tf.io.gfile.glob(data_prefix + "*")
    records = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]
    return output, [{k: v.numpy() for k, v in r.items()} for r in records]
