"""A ModelInfer that returns its predictions as a Python list, as an HTTP handler would, not as
a ModelInferResponse: grpcio cannot serialize it and answers INTERNAL.

Verdict: grpc-predict FAIL, "the handler returned a list instead of ModelInferResponse".
"""

import grpc
from grpctoy import pb, pb_grpc, serve_with_grpc


class ListAnswer(pb_grpc.GRPCInferenceServiceServicer):
    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> list[dict[str, str]]:
        return [{"label": "high"}] * request.inputs[0].shape[0]


if __name__ == "__main__":
    serve_with_grpc(ListAnswer())
