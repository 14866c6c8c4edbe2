"""KServe V2 gRPC stubs, generated from grpc_predict_v2.proto here by grpc_tools.protoc (committed: running needs
only grpcio and protobuf). Regenerate with the command at the top of the .proto."""
