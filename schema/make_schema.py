"""Regenerate the curated raw schema ``schema/schema.pbtxt`` from a CSV.

The checked-in schema is the contract between training and serving: the pipeline
imports it (ImportSchemaGen), ExampleValidator checks every new span against it,
and monitoring checks served requests against it. It starts from what TFDV infers
(what SchemaGen would produce) and adds what inference cannot know:

* environments: TRAINING and SERVING; the label is absent in SERVING;
* domains: hours, days, months, community areas, coordinates, non-negative amounts;
* presence: a feature that is almost never filled in may be absent from a span;
* payment types as a closed set; companies may be new up to 10% of a span;
* skew and drift comparators: infinity norm on categorical features and
  Jensen-Shannon divergence on numeric ones.

Run: ``.venv/bin/python schema/make_schema.py [data/taxi/data.csv]`` and review the diff.
"""
import os
import sys
import tempfile
from pathlib import Path

from core.env import set_process_environment

set_process_environment()
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from core import features as F
from core.config import Settings
from core.examples import read_csv_rows, row_to_example, write_tfrecord

# the bundled data and the checked-in schema (the settings' defaults)
OUT = Path(Settings().schema_path)
DEFAULT_CSV = Path(Settings().data_dir) / "data.csv"
INT_DOMAINS = {
    "trip_start_hour": (0, 23),
    "trip_start_day": (1, 7),
    "trip_start_month": (1, 12),
    "pickup_community_area": (1, 77),
    "dropoff_community_area": (1, 77),
    "trip_seconds": (0, None),
}
FLOAT_DOMAINS = {
    "pickup_latitude": (41.5, 42.2),
    "dropoff_latitude": (41.5, 42.2),
    "pickup_longitude": (-88.1, -87.4),
    "dropoff_longitude": (-88.1, -87.4),
    "fare": (0.0, None),
    "trip_miles": (0.0, None),
    "tips": (0.0, None),
}
SKEW_THRESHOLD_CATEGORICAL = 0.1   # infinity norm
SKEW_THRESHOLD_NUMERIC = 0.1       # Jensen-Shannon divergence
COMPANY_MIN_DOMAIN_MASS = 0.9
# Present in 1 row of 15,002: a span may well have none, which is not an anomaly.
RARELY_PRESENT = ["pickup_census_tract"]


def curate(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    schema.default_environment.extend(["TRAINING", "SERVING"])
    tfdv.get_feature(schema, F.LABEL_KEY).not_in_environment.append("SERVING")

    for name, (low, high) in INT_DOMAINS.items():
        feature = tfdv.get_feature(schema, name)
        feature.int_domain.min = low
        if high is not None:
            feature.int_domain.max = high
    for name, (low, high) in FLOAT_DOMAINS.items():
        feature = tfdv.get_feature(schema, name)
        feature.float_domain.min = low
        if high is not None:
            feature.float_domain.max = high

    for name in RARELY_PRESENT:
        presence = tfdv.get_feature(schema, name).presence
        presence.min_fraction = 0.0
        presence.min_count = 0

    # Companies keep the inferred values; a span may bring up to 10% new ones.
    tfdv.get_feature(schema, "company").distribution_constraints.min_domain_mass = (
        COMPANY_MIN_DOMAIN_MASS)

    for name in F.SKEW_WATCHED_CATEGORICAL:
        feature = tfdv.get_feature(schema, name)
        feature.skew_comparator.infinity_norm.threshold = SKEW_THRESHOLD_CATEGORICAL
        feature.drift_comparator.infinity_norm.threshold = SKEW_THRESHOLD_CATEGORICAL
    for name in F.SKEW_WATCHED_NUMERIC:
        feature = tfdv.get_feature(schema, name)
        feature.skew_comparator.jensen_shannon_divergence.threshold = SKEW_THRESHOLD_NUMERIC
        feature.drift_comparator.jensen_shannon_divergence.threshold = SKEW_THRESHOLD_NUMERIC
    return schema


def statistics_as_example_gen_sees_them(csv_path: str):
    """TFDV statistics over the CSV encoded as CsvExampleGen encodes it (empty cells
    are empty value lists), so the schema infers what SchemaGen would infer."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "examples.tfrecord")
        write_tfrecord((row_to_example(r) for r in read_csv_rows(csv_path)), path)
        return tfdv.generate_statistics_from_tfrecord(path)


def main(argv):
    csv_path = argv[1] if len(argv) > 1 else str(DEFAULT_CSV)
    stats = statistics_as_example_gen_sees_them(csv_path)
    schema = curate(tfdv.infer_schema(stats))
    tfdv.write_schema_text(schema, str(OUT))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv)
