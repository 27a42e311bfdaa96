"""Generated gRPC stubs for coinfer's services (see scripts/gen_protos; never edit the *_pb2 files)."""
