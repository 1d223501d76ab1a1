"""No grpc.health.v1 service on the gRPC port: Check answers UNIMPLEMENTED, so Vertex's gRPC
probe never succeeds (and no gRPC call reaches the servicer, which is left empty).

Verdict: grpc-health FAIL, "no grpc.health.v1 service: Vertex's gRPC probe would fail".
"""

from grpctoy import pb_grpc, serve_with_grpc

if __name__ == "__main__":
    serve_with_grpc(pb_grpc.GRPCInferenceServiceServicer(), with_health=False)
