"""serving.api's front-end independent pieces, without a server: the Input ->
examples merge and the two forms of a classify/regress result."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import input_pb2

from serving.api import GRPC, Call, result_json, result_response, serialized_examples
from serving.errors import ServingError


def _example(**features) -> tf.train.Example:
    example = tf.train.Example()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)
    return example


def test_context_is_merged_and_the_examples_own_features_win():
    inp = input_pb2.Input()
    target = inp.example_list_with_context
    target.context.CopyFrom(_example(fare=1.0, tips=9.0))
    target.examples.add().CopyFrom(_example(fare=2.0))
    target.examples.add().CopyFrom(_example(miles=3.0))
    merged = [tf.train.Example.FromString(s) for s in serialized_examples(inp)]
    assert [dict((k, v.float_list.value[0]) for k, v in e.features.feature.items())
            for e in merged] == [{"fare": 2.0, "tips": 9.0},
                                 {"fare": 1.0, "tips": 9.0, "miles": 3.0}]


def test_an_empty_input_is_refused_with_tf_servings_message():
    with pytest.raises(ServingError) as caught:
        serialized_examples(input_pb2.Input())
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", "Input is empty.")


def test_a_result_reads_the_same_as_proto_and_as_json():
    call = Call("classify", GRPC, "id", "taxi", 3, signature_name="serving_default")
    classes = np.array([[b"0", b"1"]], dtype=object)
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    response = result_response(call, (classes, scores))
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("taxi", 3, "serving_default")
    as_proto = [[(c.label, c.score) for c in row.classes]
                for row in response.result.classifications]
    assert as_proto == [[tuple(pair) for pair in row] for row in
                        result_json("classify", (classes, scores))["results"]]
    call.api = "regress"
    values = np.array([0.1, 0.9], dtype=np.float32)
    regressions = [r.value for r in result_response(call, values).result.regressions]
    assert np.allclose(regressions, result_json("regress", values)["results"])
    assert result_json("regress", values) == {"results": [0.1, 0.9]}   # float32's shortest text
