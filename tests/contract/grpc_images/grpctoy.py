"""The toy model server (``broken_images/toyserver.py``) with a gRPC port beside HTTP, for the
tests of the contract check's gRPC rules.

HTTP is the toy server's own, which passes every HTTP rule. On ``SERVING_GRPC_PORT`` a grpcio
server offers the Open Inference Protocol's ``GRPCInferenceService`` with the servicer a
fixture's ``fixture.py`` gives (the serving image's generated stubs, ``server.protos``),
``grpc.health.v1`` (SERVING at once: the toy model loads at once) unless the fixture leaves it
out, and reflection. Each fixture breaks one gRPC rule. Logging is configured, as a real
server's is, so grpcio's own errors reach the container's log.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from server.protos import grpc_predict_v2_pb2 as pb
from server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from toyserver import serve

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def serve_with_grpc(
    servicer: pb_grpc.GRPCInferenceServiceServicer, *, with_health: bool = True
) -> None:
    """Serve gRPC on ``SERVING_GRPC_PORT`` in the background, then HTTP until SIGTERM."""
    logging.basicConfig(level=logging.INFO)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    services = [INFERENCE_SERVICE, reflection.SERVICE_NAME]
    if with_health:
        checks = health.HealthServicer()
        checks.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        services.append(health.SERVICE_NAME)
    reflection.enable_server_reflection(services, server)
    server.add_insecure_port(f"0.0.0.0:{os.environ['SERVING_GRPC_PORT']}")
    server.start()
    serve()
