"""The one place that names the taxi data's features, their types, the label and the
model's interface (signature names, output key).

Transform (``modules/transform.py``), Trainer (``modules/trainer.py``), the pipeline's
pre-flight checks, serving, monitoring and the tests all import these names.

Task (as in TFX's Chicago taxi example): predict whether a trip's tip is more than
20% of its fare.
"""
from typing import Dict, List

# Raw CSV columns and the type each must parse as: 'int', 'float' or 'string'.
RAW_FEATURE_TYPES: Dict[str, str] = {
    "trip_miles": "float",
    "fare": "float",
    "trip_seconds": "int",
    "pickup_latitude": "float",
    "pickup_longitude": "float",
    "dropoff_latitude": "float",
    "dropoff_longitude": "float",
    "payment_type": "string",
    "company": "string",
    "trip_start_hour": "int",
    "trip_start_day": "int",
    "trip_start_month": "int",
    "pickup_community_area": "int",
    "dropoff_community_area": "int",
    "pickup_census_tract": "int",
    "dropoff_census_tract": "int",
    "trip_start_timestamp": "int",
}

# The raw label column: the tip in dollars. Absent in the SERVING environment.
LABEL_KEY = "tips"
LABEL_TYPE = "float"
# Needed next to the label to derive the training target.
FARE_KEY = "fare"
TIP_FRACTION = 0.2
# The target the model learns, produced by Transform: 1 if tips > 20% of fare.
TRANSFORMED_LABEL_KEY = "big_tipper"

# The exported model's interface (modules/trainer.py): its signatures and the output
# key under which they answer the probability that the trip is a big tipper.
DEFAULT_SIGNATURE = "serving_default"      # serialized tf.Examples in
RAW_SIGNATURE = "serving_raw"              # one tensor per raw feature in
TRANSFORM_SIGNATURE = "transform_features"  # serialized tf.Examples in, Transform's outputs out
PREDICTION_KEY = "probabilities"

# Column used to order trips in time (spans, held-out traffic); not a model input.
TIME_KEY = "trip_start_timestamp"

# Model inputs, grouped by how Transform encodes them.
DENSE_FLOAT_FEATURES: List[str] = ["trip_miles", "fare", "trip_seconds"]
BUCKET_FEATURES: List[str] = [
    "pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude",
]
FEATURE_BUCKET_COUNT = 10
VOCAB_FEATURES: List[str] = ["payment_type", "company"]
VOCAB_SIZE = 1000
OOV_SIZE = 10
# Integer categories with their number of values (index = value, clipped).
CATEGORICAL_INT_FEATURES: Dict[str, int] = {
    "trip_start_hour": 24,
    "trip_start_day": 8,       # 1..7
    "trip_start_month": 13,    # 1..12
    "pickup_community_area": 78,
    "dropoff_community_area": 78,
}
# Census tracts are 11-digit codes: hashed, not indexed. (pickup_census_tract is
# filled in on 1 row of 15,002: it stays in the schema but is not a model input.)
HASHED_FEATURES: List[str] = ["dropoff_census_tract"]
HASH_BUCKETS = 100

MODEL_FEATURES: List[str] = (
    DENSE_FLOAT_FEATURES + BUCKET_FEATURES + VOCAB_FEATURES
    + list(CATEGORICAL_INT_FEATURES) + HASHED_FEATURES
)
# What a client sends to the model: every raw feature but the label.
SERVING_FEATURES: List[str] = list(RAW_FEATURE_TYPES)
CSV_COLUMNS: List[str] = SERVING_FEATURES + [LABEL_KEY]

# Features whose training/serving skew and drift the schema watches.
SKEW_WATCHED_CATEGORICAL: List[str] = ["payment_type", "company"]
SKEW_WATCHED_NUMERIC: List[str] = ["fare", "trip_miles", "trip_seconds"]


def transformed_name(key: str) -> str:
    """Name of a feature after Transform."""
    return key + "_xf"


def column_type(column: str) -> str:
    """The expected type of a CSV column ('int', 'float' or 'string')."""
    if column == LABEL_KEY:
        return LABEL_TYPE
    return RAW_FEATURE_TYPES[column]


def default_value(column: str):
    """The value a missing entry stands for (Transform fills these in)."""
    return "" if column_type(column) == "string" else 0


def is_big_tipper(tips, fare):
    """The label rule: did the tip exceed TIP_FRACTION of the fare? Elementwise, on
    TensorFlow tensors (Transform) and numpy arrays (monitoring) alike; a boolean
    result. A missing tip is NaN and never a big tip (comparisons with NaN are false);
    the caller fills a missing fare with its default value, 0."""
    return tips > fare * TIP_FRACTION
