"""The Open Inference Protocol (KServe V2) beside TF Serving's API: REST routes
(``serving.v2.rest``) and ``inference.GRPCInferenceService`` (``serving.v2.grpc``)
on the server's ports, over ``serving.api.ServingApi`` (``serving.v2.infer``);
tensors in ``serving.v2.tensors``; the gRPC stubs ``grpc_predict_v2_pb2*`` are
generated from ``third_party/kserve/grpc_predict_v2.proto`` by ``make protos``."""
