"""A GRPCInferenceService servicer without ModelInfer: grpcio answers UNIMPLEMENTED.

Verdict: grpc-predict FAIL, "Predict is not implemented: UNIMPLEMENTED".
"""

import grpc
from grpctoy import pb, pb_grpc, serve_with_grpc


class NoModelInfer(pb_grpc.GRPCInferenceServiceServicer):
    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)


if __name__ == "__main__":
    serve_with_grpc(NoModelInfer())
